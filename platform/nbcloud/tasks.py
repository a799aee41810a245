"""The control plane's Celery tasks: thin adapters that call a service.

They run on the `control` and `billing` queues (`nbcloud.dispatch.ROUTES`);
the host's tasks are in `workers.tasks`. Several control workers may run them:
placement passes take turns on the hosts' row locks; a beat round runs on one
worker at a time (`locks.one_at_a_time`), the others skip it; the outbox is
flushed with rows skipped when locked.
"""

import logging
from collections.abc import Callable

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.utils import timezone

from nbcloud import dispatch
from nbcloud.billing.services import tick
from nbcloud.hosts.services import place_queued
from nbcloud.locks import one_at_a_time
from nbcloud.monitoring import limits
from nbcloud.notebooks import reconcile
from nbcloud.notices import services as notices

log = logging.getLogger(__name__)


def _one_round(name: str, work: Callable[[], None]) -> None:
    """Run beat's round `name` unless another worker is running it now."""
    with one_at_a_time(name) as held:
        if not held:
            log.info("%s: another worker is running this round; skipped", name)
            return
        work()


@shared_task(name=dispatch.SCHEDULE)
def schedule() -> None:
    place_queued()


@shared_task(name=dispatch.RECONCILE, expires=settings.NBCLOUD_RECONCILE_INTERVAL)
def reconcile_all() -> None:
    def round_() -> None:
        reconcile.run()
        notices.resend_overdue()
        notices.prune()

    _one_round(dispatch.RECONCILE, round_)


@shared_task(name=dispatch.CHECK_LIMITS, expires=settings.NBCLOUD_LIMITS_CHECK_INTERVAL)
def check_limits() -> None:
    _one_round(dispatch.CHECK_LIMITS, limits.check_limits)


@shared_task(name=dispatch.BILLING_TICK, expires=60)
def billing_tick() -> None:
    def round_() -> None:
        now = timezone.now()
        tick(now)
        limits.enforce_budgets(now)

    _one_round(dispatch.BILLING_TICK, round_)


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
