"""Waiting for real parts: one polling loop (`wait_for`), and a notebook's state read
through the API (`wait_state`) or from its row (`wait_row_state`).

A notebook leaves FAILED only by a user's action, so waiting for any other
state fails as soon as it is FAILED (or DELETED), with its status, instead of
running to the timeout.
"""

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

GIVEN_UP = frozenset({"FAILED", "DELETED"})


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 60,
    interval: float = 0.2,
    what: str | Callable[[], str] = "condition",
) -> T:
    """Call `predicate` every `interval` s until it returns something true; return that.

    `what` names what is awaited in the timeout's message; a callable is called
    then, so the message can show the last state seen.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout} s waiting for {what() if callable(what) else what}"
    )


def api_status(api, url: str) -> dict:
    """A notebook's `status` through the API (asserting the call succeeds).

    `api` is any client whose `get(url)` answers with `status_code` and `json()`:
    a DRF APIClient with a path, or an httpx/requests client with a full URL.
    """
    reply = api.get(url)
    assert reply.status_code == 200, reply.content
    return reply.json()["status"]


def wait_state(api, url: str, state: str, timeout: float = 120) -> dict:
    """Poll the API until the notebook at `url` is in `state`; its status then."""
    last: dict = {}

    def reached():
        status = api_status(api, url)
        last.update(status)
        _not_given_up(status["state"], state, status)
        return status["state"] == state and status

    return wait_for(reached, timeout=timeout, what=lambda: f"{state} (last: {last})")


def wait_row_state(notebook_id, state: str, timeout: float = 120):
    """Poll the database until the notebook's row is in `state`; the row then (its host
    loaded)."""
    from nbcloud.notebooks.models import Notebook

    def reached():
        row = Notebook.objects.select_related("host").get(pk=notebook_id)
        _not_given_up(row.state, state, f"{row.info_code}: {row.info_message}")
        return row if row.state == state else None

    return wait_for(
        reached,
        timeout=timeout,
        what=lambda: f"{notebook_id} {state} (last: {Notebook.objects.get(pk=notebook_id).state})",
    )


def _not_given_up(current: str, wanted: str, detail) -> None:
    if current != wanted and current in GIVEN_UP:
        raise AssertionError(f"waiting for {wanted}, the notebook is {current}: {detail}")
