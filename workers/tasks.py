"""Celery tasks: thin adapters that take ids, reload rows and call a service."""

from celery import shared_task
from django.conf import settings

from . import lifecycle, reconcile


@shared_task(name="notebooks.schedule")
def schedule() -> None:
    from nbcloud.hosts.services import place_queued

    place_queued()


@shared_task(name="notebooks.start")
def start_notebook(notebook_id: str, *, host: str) -> None:
    lifecycle.start(notebook_id, host)


@shared_task(name="notebooks.stop")
def stop_notebook(notebook_id: str, *, host: str) -> None:
    lifecycle.stop(notebook_id, host)


@shared_task(name="notebooks.delete")
def delete_notebook(notebook_id: str, *, host: str) -> None:
    lifecycle.delete(notebook_id, host)


@shared_task(name="notebooks.push_volumes")
def push_volumes(notebook_id: str, *, host: str) -> None:
    lifecycle.push_volumes(notebook_id, host)


@shared_task(name="hosts.check_notebooks")
def check_notebooks(*, host: str) -> None:
    lifecycle.check_host(host)


@shared_task(name="notebooks.reconcile", expires=settings.NBCLOUD_RECONCILE_INTERVAL)
def reconcile_all() -> None:
    reconcile.run()


@shared_task(name="billing.tick", expires=60)
def billing_tick() -> None:
    from nbcloud.billing.services import tick

    tick()
