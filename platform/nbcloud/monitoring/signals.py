"""Where fleet metrics are observed: Celery's task signals and notebook events."""

import time

from celery import signals as celery_signals
from django.db import transaction
from django.db.models.signals import post_save

from . import fleet

_started: dict[str, float] = {}


def connect() -> None:
    from nbcloud.notebooks.models import NotebookEvent

    celery_signals.task_failure.connect(_task_failed, weak=False)
    celery_signals.task_prerun.connect(_task_started, weak=False)
    celery_signals.task_postrun.connect(_task_ended, weak=False)
    post_save.connect(_event_written, sender=NotebookEvent, weak=False)


def _task_failed(sender=None, **kwargs) -> None:
    fleet.increment(fleet.TASK_FAILURES, task=getattr(sender, "name", str(sender)))


def _task_started(task_id=None, task=None, **kwargs) -> None:
    if task is not None and task.name == "billing.tick":
        _started[task_id] = time.monotonic()


def _task_ended(task_id=None, task=None, **kwargs) -> None:
    began = _started.pop(task_id, None)
    if began is not None:
        fleet.observe(fleet.BILLING_TICK, time.monotonic() - began)


def _event_written(sender, instance, created: bool, **kwargs) -> None:
    """STARTING -> RUNNING ends a start: observe how long since it was asked for."""
    from nbcloud.notebooks.states import State

    if not created or instance.from_state != State.STARTING or instance.to_state != State.RUNNING:
        return
    requested = (
        sender.objects.filter(notebook_id=instance.notebook_id, to_state=State.QUEUED)
        .order_by("-at", "-id")
        .values_list("at", flat=True)
        .first()
    )
    if requested is None:
        return
    runtime = instance.notebook.host.runtime if instance.notebook.host_id else "unknown"
    seconds = (instance.at - requested).total_seconds()
    transaction.on_commit(lambda: fleet.observe(fleet.START_DURATION, seconds, runtime=runtime))
