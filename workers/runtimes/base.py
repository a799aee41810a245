"""The runtime contract, after JupyterHub's Spawner.

A runtime runs one notebook's editor. `start` returns where to reach it,
`poll` returns None while it runs and an exit status once it has ended,
`stop` asks politely and then insists, `stats` and `logs` report on it.
`get_state` returns a small JSON dict (a pid, a port, a container id) that is
stored on the notebook row, so a fresh worker can `load_state` and take over.
"""

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from django.conf import settings


class StartError(RuntimeError):
    """A start failed. `user_message` is for the notebook's owner; str() for the operator."""

    def __init__(self, user_message: str, operator_detail: str = ""):
        super().__init__(f"{user_message} {operator_detail}".strip())
        self.user_message = user_message


@dataclass(frozen=True)
class Mount:
    """A host directory bound into the editor's sandbox or container (a volume)."""

    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a runtime needs to run an editor, as plain values."""

    notebook_id: str
    editor_id: str
    env_dir: Path
    workspace: Path
    uid: int
    secret: str
    base_url: str
    env_vars: dict[str, str] = field(default_factory=dict)
    cpus: int = 1
    memory_bytes: int = 0
    gpu_uuids: tuple[str, ...] = ()
    # The device nodes of those GPUs (`nvidia3`), the only ones the editor sees.
    gpu_devices: tuple[str, ...] = ()
    image: str = ""
    project: str = ""
    # Volumes bound below /workspace; only `start` uses them.
    mounts: tuple[Mount, ...] = ()
    # The notebook's max_runtime, for runtimes whose scheduler enforces one (0: none).
    time_limit_minutes: int = 0
    # For runtimes whose job restores the workspace on its node (`restores_workspace`):
    # the latest backup (pk, storage_name, sha256) when the shared copy is gone; else {}.
    restore: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    base_url: str

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return self.origin + self.base_url


def log_file(notebook_id: str) -> Path:
    """Where a notebook's editor output is kept on its host, across its runs."""
    return settings.DATA_DIR / "logs" / f"{notebook_id}.log"


def tail_file(path: Path, lines: int) -> str:
    """The last lines of a text file ("" when there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * lines))
            text = f.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(text[-lines:])


class Runtime(ABC):
    name: str

    def __init__(self, spec: LaunchSpec, state: dict | None = None):
        self.spec = spec
        self.state: dict = {}
        self.load_state(state or {})

    def load_state(self, state: dict) -> None:
        self.state = dict(state)

    def get_state(self) -> dict:
        return dict(self.state)

    @abstractmethod
    def check_environment(self, framework_id: str, version: str) -> None:
        """Raise StartError when this host lacks the notebook's environment."""

    @abstractmethod
    def start(self) -> Endpoint: ...

    @abstractmethod
    def poll(self) -> int | None: ...

    @abstractmethod
    def stop(self, timeout: float) -> None: ...

    @abstractmethod
    def stats(self) -> dict: ...

    @abstractmethod
    def logs(self, tail: int = 100) -> str: ...

    def log_version(self) -> object | None:
        """Something that changes whenever the log does (None: unknown, read it)."""
        return None

    # A runtime on a cluster scheduler (slurm) reports what the scheduler decides;
    # the others run at once, and never say anything here.

    def pending(self) -> str | None:
        """Why the scheduler has not started the editor yet (its reason, the place in
        line); None once it runs, or when nothing waits."""
        return None

    def end_reason(self) -> str:
        """What the scheduler says ended the editor (a time limit, an admin's cancel)."""
        return ""

    def ran(self) -> tuple[datetime | None, datetime | None]:
        """When the scheduler says the editor started and ended, for billing; (None, None)
        when the platform's own times count."""
        return None, None

    # A runtime whose job restores and saves the workspace on its own node (slurm):
    # the worker hands it the latest backup (LaunchSpec.restore) and records the
    # backup the job saved when it ended; the others leave both to the worker.
    restores_workspace = False

    def workspace_result(self) -> dict:
        """What the ended job did with the workspace: {"saved": write_archive's values}
        or {"restore_failed": {"kind", "detail"}}; {} when it did neither."""
        return {}

    def forget_workspace_result(self) -> None:
        """The result above is recorded: gone, so nothing records it twice."""
        return None

    def discard_workspace(self) -> None:
        """Before a stop that must not save the workspace (a delete)."""
        return None

    @property
    @abstractmethod
    def endpoint(self) -> Endpoint | None: ...
