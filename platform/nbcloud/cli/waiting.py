"""`--wait`: follow a notebook until it reaches a state, showing its progress.

Each change of state or of `info.message` is printed as a line on stderr; on
a terminal a spinner also shows the current state and the time spent.
"""

import time
from contextlib import nullcontext
from datetime import datetime
from typing import Optional

from rich.text import Text

from . import output
from .client import ApiClient, ApiError
from .compat import StrEnum

# States a notebook rests in until someone acts: waiting for another one from
# there would wait forever.
SETTLED = frozenset({"RUNNING", "STOPPED", "FAILED", "DELETED"})
STATES = (
    "QUEUED",
    "STARTING",
    "RUNNING",
    "STOPPING",
    "STOPPED",
    "RESTARTING",
    "DELETING",
    "DELETED",
    "FAILED",
)
State = StrEnum("State", {s: s for s in STATES})


class WaitFailed(Exception):
    """The notebook ended somewhere else than asked (FAILED, most often), or never arrived."""

    def __init__(self, message: str, notebook: Optional[dict] = None):
        super().__init__(message)
        self.notebook = notebook


def describe(nb: dict) -> str:
    """`info` in words: 'PLACED: Placed on host gpu-1', without a code that repeats the state."""
    info = nb["status"].get("info") or {}
    code, message = info.get("code") or "", info.get("message") or ""
    if code == nb["status"]["state"]:
        code = ""
    return f"{code}: {message}" if code and message else message or code


def wait_for_state(
    client: ApiClient,
    notebook_id: str,
    target: str,
    *,
    timeout: float = 1800,
    interval: float = 0.5,
    max_interval: float = 2.0,
) -> Optional[dict]:
    """Poll until the notebook is in `target`; the notebook then (None once DELETED).

    Raises WaitFailed when it settles elsewhere (FAILED, or STOPPED while
    waiting for RUNNING) or when `timeout` seconds pass.
    """
    err = output.err_console()
    started = time.monotonic()
    last: Optional[tuple] = None
    spinner = (
        err.status(f"waiting for {target}…", spinner="dots") if err.is_terminal else nullcontext()
    )
    with spinner as status:
        while True:
            try:
                nb = client.get(client.notebook_path(notebook_id))
            except ApiError as exc:
                if exc.status == 404 and target == "DELETED":
                    _line(err, "DELETED", "")
                    return None
                raise
            state, detail = nb["status"]["state"], describe(nb)
            if (state, detail) != last:
                _line(err, state, detail)
                last = (state, detail)
            if state == target:
                return nb
            name = nb["spec"]["name"]
            if state == "FAILED":
                raise WaitFailed(f"notebook {name} ({notebook_id}) FAILED: {detail}", nb)
            if state in SETTLED:
                raise WaitFailed(
                    f"notebook {name} ({notebook_id}) is {state}, not {target}"
                    + (f" ({detail})" if detail else ""),
                    nb,
                )
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                raise WaitFailed(
                    f"notebook {name} ({notebook_id}) is still {state} after {timeout:g} s "
                    f"(follow it with `nbc notebook wait {notebook_id} --state {target}`)",
                    nb,
                )
            if status is not None:
                status.update(
                    Text(state, style=output.STATE_STYLES.get(state, ""))
                    + Text(f"  {output.duration(elapsed)}, waiting for {target}", style="dim")
                )
            time.sleep(interval)
            interval = min(interval * 1.5, max_interval)


def _line(err, state: str, detail: str) -> None:
    stamp = datetime.now().strftime("%H:%M:%S")
    err.print(
        Text(f"{stamp}  ", style="dim")
        + Text(f"{state:<9}", style=output.STATE_STYLES.get(state, ""))
        + Text(f"  {detail}" if detail else "")
    )
