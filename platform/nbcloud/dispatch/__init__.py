"""The one place the control plane sends work: tasks by name, after commit.

Control code never imports `workers` (the host side). It names the task, and
Celery carries it to the queue the routes table below gives: `control`
(orchestration, scheduling, reconcile, limits, notices), `billing` (beat's ticks), or
`host.<name>` for work that must run on one host (those tasks take a `host`
keyword naming it). Every send is written to an outbox in the caller's
transaction and sent once it commits (at once outside one): a worker never sees
a row its sender may roll back, and a task the broker could not take (the
broker down, a crash between commit and send) stays in the outbox until beat's
`dispatch.flush_outbox` sends it, seconds after the broker is back. Reconcile
remains the last net (tasks are idempotent).
"""

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from nbcloud import bulk

log = logging.getLogger(__name__)


class Queue(StrEnum):
    CONTROL = "control"
    BILLING = "billing"
    HOST = "host"


# Task names, as the workers register them.
SCHEDULE = "notebooks.schedule"
RECONCILE = "notebooks.reconcile"
CHECK_LIMITS = "notebooks.check_limits"
BILLING_TICK = "billing.tick"
FLUSH_OUTBOX = "dispatch.flush_outbox"
START = "notebooks.start"
STOP = "notebooks.stop"
DELETE = "notebooks.delete"
RESTART = "notebooks.restart"
PUSH_VOLUMES = "notebooks.push_volumes"
CHECK_NOTEBOOKS = "hosts.check_notebooks"
CHECK_IDLE = "hosts.check_idle"
DELIVER_NOTICE = "notices.deliver"

# The one routes table: which queue each task runs on.
ROUTES: dict[str, Queue] = {
    SCHEDULE: Queue.CONTROL,
    RECONCILE: Queue.CONTROL,
    CHECK_LIMITS: Queue.CONTROL,
    BILLING_TICK: Queue.BILLING,
    FLUSH_OUTBOX: Queue.CONTROL,
    START: Queue.HOST,
    STOP: Queue.HOST,
    DELETE: Queue.HOST,
    RESTART: Queue.HOST,
    PUSH_VOLUMES: Queue.HOST,
    CHECK_NOTEBOOKS: Queue.HOST,
    CHECK_IDLE: Queue.HOST,
    DELIVER_NOTICE: Queue.CONTROL,
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
class Task:
    """A task to send: its name, arguments and Celery options (e.g. `expires`)."""

    name: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Sending:
    """Tasks to send once the transaction commits (what `on_commit` holds); their
    outbox rows go, in one statement, once the broker took them all."""

    tasks: tuple[Task, ...]
    outbox_ids: tuple[int, ...]

    def __call__(self) -> None:
        from nbcloud.celery import app

        from .models import OutboxMessage

        kept = OutboxMessage.objects.filter(pk__in=self.outbox_ids)
        sent = 0
        try:
            with app.producer_or_acquire() as producer:
                for task in self.tasks:
                    app.send_task(
                        task.name,
                        args=task.args,
                        kwargs=task.kwargs,
                        producer=producer,
                        **task.options,
                    )
                    sent += 1
        except Exception as exc:  # the broker is down: the outbox keeps them all
            # (`flush_outbox` sends them again; a task sent twice finds its work done)
            log.warning(
                "%d of %d task(s) not sent (%s); kept in the outbox",
                len(self.tasks) - sent,
                len(self.tasks),
                exc,
            )
            kept.update(attempts=F("attempts") + 1, last_error=str(exc)[:500])
            return
        kept.delete()


_OUTBOX_COLUMNS = {"name": "text", "args": "jsonb", "kwargs": "jsonb", "options": "jsonb"}
_KEEP = """
INSERT INTO dispatch_outboxmessage (name, args, kwargs, options, created_at, attempts, last_error)
SELECT v.name, v.args, v.kwargs, v.options, %s, 0, '' FROM {rows}
RETURNING id
"""


def send_all(tasks: Iterable[Task]) -> None:
    """Send `tasks` once the current transaction commits, in order. They are written
    to the outbox in the same transaction (one INSERT for all), so a broker that is
    down (or a process that dies before the send) delays them, never loses them:
    `flush_outbox` sends what is left."""
    tasks = tuple(tasks)
    for task in tasks:
        if task.name not in ROUTES:
            raise UnroutedTask(
                f"task {task.name!r} has no route: add it to nbcloud.dispatch.ROUTES"
            )
    if not tasks:
        return
    rows = [
        {"name": t.name, "args": list(t.args), "kwargs": t.kwargs, "options": t.options}
        for t in tasks
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            _KEEP.format(rows=bulk.table(_OUTBOX_COLUMNS)),
            [bulk.stamp(timezone.now()), bulk.rows(rows)],
        )
        kept = [row[0] for row in cursor]
    transaction.on_commit(Sending(tasks, tuple(kept)))


def send(name: str, args: tuple = (), kwargs: dict | None = None, **options) -> None:
    """Send task `name` once the current transaction commits (`options`: Celery's,
    e.g. `expires`); see `send_all`."""
    send_all([Task(name, tuple(args), dict(kwargs or {}), options)])


def flush_outbox(older_than: float = 2.0, limit: int = 1000) -> int:
    """Send the tasks left in the outbox (their broker was down); returns how many went.

    Rows younger than `older_than` seconds are left to their own on-commit send.
    A task whose `expires` (seconds) passed while it waited is dropped, not sent:
    its worker would drop it, and a long outage would otherwise end in a flood of
    stale periodic checks (each host asks for one at every heartbeat). Concurrent
    flushes skip each other's rows; a task sent twice finds its work done (tasks
    are idempotent)."""
    from nbcloud.celery import app

    from .models import OutboxMessage

    sent = 0
    cutoff = timezone.now() - timedelta(seconds=older_than)
    with transaction.atomic():
        pending = (
            OutboxMessage.objects.select_for_update(skip_locked=True)
            .filter(created_at__lt=cutoff)
            .order_by("id")[:limit]
        )
        done, expired = [], 0
        now = timezone.now()
        for message in pending:
            expires = message.options.get("expires")
            if (
                isinstance(expires, int | float)
                and message.created_at + timedelta(seconds=expires) < now
            ):
                done.append(message.pk)
                expired += 1
                continue
            try:
                app.send_task(
                    message.name,
                    args=tuple(message.args),
                    kwargs=message.kwargs,
                    **message.options,
                )
            except Exception as exc:
                log.warning("outbox: the broker still refuses tasks (%s)", exc)
                break
            done.append(message.pk)
        sent = OutboxMessage.objects.filter(pk__in=done).delete()[0] - expired
    if sent or expired:
        log.info(
            "outbox: sent %d task(s) held while the broker was away, dropped %d expired",
            sent,
            expired,
        )
    return sent


# What control asks for, by name.


def schedule() -> None:
    """Place waiting notebooks (a control task, so the caller's request stays short)."""
    send(SCHEDULE)


def start(notebook_id: str, host: str) -> None:
    start_all([(notebook_id, host)])


def start_all(placements: Iterable[tuple[str, str]]) -> None:
    """Start each (notebook id, host): one outbox INSERT for them all."""
    send_all(Task(START, (notebook_id,), {"host": host}) for notebook_id, host in placements)


def stop(notebook_id: str, host: str) -> None:
    send(STOP, (notebook_id,), {"host": host})


def delete(notebook_id: str, host: str) -> None:
    send(DELETE, (notebook_id,), {"host": host})


def restart(notebook_id: str, host: str) -> None:
    send(RESTART, (notebook_id,), {"host": host})


def push_volumes(notebook_id: str, host: str) -> None:
    send(PUSH_VOLUMES, (notebook_id,), {"host": host})


def check_notebooks(*hosts: str) -> None:
    """Ask each host to check its editors: one outbox INSERT for them all. Sent by
    each host's heartbeat; a check not begun by the next heartbeat is dropped."""
    expires = settings.NBCLOUD_HEARTBEAT_INTERVAL
    send_all(Task(CHECK_NOTEBOOKS, (), {"host": h}, {"expires": expires}) for h in hosts)


def check_idle(*hosts: str) -> None:
    """Ask each host to check its notebooks' idleness: one outbox INSERT for them all."""
    expires = settings.NBCLOUD_LIMITS_CHECK_INTERVAL
    send_all(Task(CHECK_IDLE, (), {"host": h}, {"expires": expires}) for h in hosts)


def deliver_notice(delivery_id: int) -> None:
    send(DELIVER_NOTICE, (delivery_id,))
