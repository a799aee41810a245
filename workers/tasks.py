"""The host's Celery tasks: thin adapters that take ids, reload rows and act.

Each runs on one host's queue (`host.<name>`, `nbcloud.dispatch.ROUTES`) and
takes the host's name; the control plane sends them by name through
`nbcloud.dispatch`.
"""

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings

from nbcloud import dispatch, locks

from . import idle, lifecycle


@shared_task(name=dispatch.START)
def start_notebook(notebook_id: str, *, host: str) -> None:
    lifecycle.start(notebook_id, host)


@shared_task(name=dispatch.STOP)
def stop_notebook(notebook_id: str, *, host: str, attempt: int = 0) -> None:
    lifecycle.stop(notebook_id, host, attempt)


@shared_task(name=dispatch.DELETE)
def delete_notebook(notebook_id: str, *, host: str) -> None:
    lifecycle.delete(notebook_id, host)


@shared_task(name=dispatch.RESTART)
def restart_notebook(notebook_id: str, *, host: str) -> None:
    lifecycle.restart(notebook_id, host)


@shared_task(name=dispatch.PUSH_VOLUMES)
def push_volumes(notebook_id: str, *, host: str) -> None:
    lifecycle.push_volumes(notebook_id, host)


@shared_task(name=dispatch.CHECK_NOTEBOOKS)
def check_notebooks(*, host: str) -> None:
    # Asked at every heartbeat: a check still under way (a slow scheduler, a dead
    # editor's workspace being saved) makes the next one a no-op, not a second
    # pool process doing the same.
    with locks.one_at_a_time(f"hosts.check_notebooks.{host}") as mine:
        if mine:
            lifecycle.check_host(host)


@shared_task(name=dispatch.CHECK_IDLE, expires=settings.NBCLOUD_LIMITS_CHECK_INTERVAL)
def check_idle(*, host: str) -> None:
    idle.check_idle(host)


@worker_ready.connect
def start_host_services(sender=None, **kwargs) -> None:
    """A worker that consumes a host's queue (host.<name>) samples that host's notebooks
    and ships their editors' logs."""
    from .sampler import start_host_sampler

    queues = {q.name for q in sender.app.amqp.queues.consume_from.values()} if sender else set()
    prefix = dispatch.host_queue("")
    hosts = sorted(q.removeprefix(prefix) for q in queues if q.startswith(prefix))
    if hosts:
        start_host_sampler(hosts[0])
