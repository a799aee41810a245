"""The one place the control plane sends work: tasks by name, after commit.

Control code never imports `workers` (the host side). It names the task, and
Celery carries it to the queue the routes table below gives: `control`
(orchestration, scheduling, reconcile, limits), `billing` (beat's ticks), or
`host.<name>` for work that must run on one host (those tasks take a `host`
keyword naming it). Every send waits for the current transaction to commit
(at once outside one): a worker never sees a row its sender may roll back.
A send lost between commit and broker (a crash, the broker down) is found and
sent again by reconcile (tasks are idempotent).
"""

from dataclasses import dataclass, field
from enum import StrEnum

from django.conf import settings
from django.db import transaction


class Queue(StrEnum):
    CONTROL = "control"
    BILLING = "billing"
    HOST = "host"


# Task names, as the workers register them.
SCHEDULE = "notebooks.schedule"
RECONCILE = "notebooks.reconcile"
CHECK_LIMITS = "notebooks.check_limits"
BILLING_TICK = "billing.tick"
START = "notebooks.start"
STOP = "notebooks.stop"
DELETE = "notebooks.delete"
RESTART = "notebooks.restart"
PUSH_VOLUMES = "notebooks.push_volumes"
CHECK_NOTEBOOKS = "hosts.check_notebooks"
CHECK_IDLE = "hosts.check_idle"

# The one routes table: which queue each task runs on.
ROUTES: dict[str, Queue] = {
    SCHEDULE: Queue.CONTROL,
    RECONCILE: Queue.CONTROL,
    CHECK_LIMITS: Queue.CONTROL,
    BILLING_TICK: Queue.BILLING,
    START: Queue.HOST,
    STOP: Queue.HOST,
    DELETE: Queue.HOST,
    RESTART: Queue.HOST,
    PUSH_VOLUMES: Queue.HOST,
    CHECK_NOTEBOOKS: Queue.HOST,
    CHECK_IDLE: Queue.HOST,
}


class UnroutedTask(LookupError):
    pass


def host_queue(host: str) -> str:
    return f"{Queue.HOST}.{host}"


def route_task(name, args, kwargs, options, task=None, **kw):
    """Celery's router (`task_routes`): the queue of task `name`."""
    if name.startswith("celery."):
        return None
    try:
        queue = ROUTES[name]
    except KeyError:
        raise UnroutedTask(
            f"task {name!r} has no route: add it to nbcloud.dispatch.ROUTES"
        ) from None
    if queue is Queue.HOST:
        return {"queue": host_queue(kwargs["host"])}
    return {"queue": str(queue)}


@dataclass(frozen=True)
class Sending:
    """A task to send once the transaction commits (what `on_commit` holds)."""

    name: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    def __call__(self) -> None:
        from nbcloud.celery import app

        app.send_task(self.name, args=self.args, kwargs=self.kwargs, **self.options)


def send(name: str, args: tuple = (), kwargs: dict | None = None, **options) -> None:
    """Send task `name` once the current transaction commits (`options`: Celery's,
    e.g. `expires`)."""
    if name not in ROUTES:
        raise UnroutedTask(f"task {name!r} has no route: add it to nbcloud.dispatch.ROUTES")
    transaction.on_commit(Sending(name, tuple(args), dict(kwargs or {}), options))


# What control asks for, by name.


def schedule() -> None:
    """Place waiting notebooks (a control task, so the caller's request stays short)."""
    send(SCHEDULE)


def start(notebook_id: str, host: str) -> None:
    send(START, (notebook_id,), {"host": host})


def stop(notebook_id: str, host: str) -> None:
    send(STOP, (notebook_id,), {"host": host})


def delete(notebook_id: str, host: str) -> None:
    send(DELETE, (notebook_id,), {"host": host})


def restart(notebook_id: str, host: str) -> None:
    send(RESTART, (notebook_id,), {"host": host})


def push_volumes(notebook_id: str, host: str) -> None:
    send(PUSH_VOLUMES, (notebook_id,), {"host": host})


def check_notebooks(host: str) -> None:
    send(CHECK_NOTEBOOKS, kwargs={"host": host}, expires=settings.NBCLOUD_RECONCILE_INTERVAL)


def check_idle(host: str) -> None:
    send(CHECK_IDLE, kwargs={"host": host}, expires=settings.NBCLOUD_LIMITS_CHECK_INTERVAL)
