"""The control plane's Celery tasks: thin adapters that call a service.

They run on the `control` and `billing` queues (`nbcloud.dispatch.ROUTES`);
the host's tasks are in `workers.tasks`.
"""

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.utils import timezone

from nbcloud import dispatch
from nbcloud.billing.services import tick
from nbcloud.hosts.services import place_queued
from nbcloud.monitoring import limits
from nbcloud.notebooks import reconcile
from nbcloud.notices import services as notices


@shared_task(name=dispatch.SCHEDULE)
def schedule() -> None:
    place_queued()


@shared_task(name=dispatch.RECONCILE, expires=settings.NBCLOUD_RECONCILE_INTERVAL)
def reconcile_all() -> None:
    reconcile.run()
    notices.resend_overdue()
    notices.prune()


@shared_task(name=dispatch.CHECK_LIMITS, expires=settings.NBCLOUD_LIMITS_CHECK_INTERVAL)
def check_limits() -> None:
    limits.check_limits()


@shared_task(name=dispatch.BILLING_TICK, expires=60)
def billing_tick() -> None:
    now = timezone.now()
    tick(now)
    limits.enforce_budgets(now)


@shared_task(name=dispatch.DELIVER_NOTICE, bind=True, max_retries=None)
def deliver_notice(self, delivery_id: int) -> None:
    """One attempt; a failure is tried again with backoff (the service counts attempts)."""
    delay = notices.deliver(delivery_id)
    if delay is not None:
        raise self.retry(countdown=delay)


@shared_task(name=dispatch.FLUSH_OUTBOX, expires=settings.NBCLOUD_OUTBOX_INTERVAL)
def flush_outbox() -> None:
    dispatch.flush_outbox()


@worker_ready.connect
def resume_control(sender=None, **kwargs) -> None:
    """A worker of the control queue (re)started: place and reconcile at once rather
    than at beat's next round."""
    queues = {q.name for q in sender.app.amqp.queues.consume_from.values()} if sender else set()
    if dispatch.Queue.CONTROL in queues:
        dispatch.flush_outbox(older_than=0)
        dispatch.schedule()
        dispatch.send(dispatch.RECONCILE, expires=settings.NBCLOUD_RECONCILE_INTERVAL)
