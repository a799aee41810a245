"""Notices: recorded in the caller's transaction, delivered by the control plane.

`notify` writes the notice and one delivery per target that wants its kind, and
sends `notices.deliver` for each through the dispatch outbox: nothing is sent
for a change that rolls back, and a broker that is down delays a notice, never
loses it. `deliver` makes one attempt and says when to try again: Celery's
retry waits NBCLOUD_NOTICE_RETRY_DELAY seconds, doubling up to
NBCLOUD_NOTICE_RETRY_MAX, for at most NBCLOUD_NOTICE_ATTEMPTS attempts. A
delivery whose retry was lost (a worker killed, the broker away) is sent again
by `resend_overdue`, which reconcile runs, as it runs `prune` (notices are kept
NBCLOUD_NOTICE_RETENTION_DAYS days).
"""

import json
import logging
import smtplib
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from nbcloud import dispatch
from nbcloud.projects.models import Project

from . import webhooks
from .models import (
    CLAIMABLE_STATES,
    OPEN_STATES,
    Delivery,
    DeliveryState,
    Kind,
    Notice,
    NoticeTarget,
)

log = logging.getLogger(__name__)

# A delivery being sent for longer than this lost its worker: it is tried again.
SENDING_LEASE = timedelta(minutes=5)


def console_url(project: Project, path: str = "") -> str:
    return f"{settings.NBCLOUD_PUBLIC_URL}/projects/{project.name}/{path}"


def notebook_data(notebook, **now) -> dict:
    """What a notice says of a notebook; `now` gives its state, code and message where
    the row is changing (the caller's copy still holds the old ones)."""
    return {
        "notebook": {
            "id": str(notebook.pk),
            "name": notebook.name,
            "state": str(now.get("state", notebook.state)),
            "info": {
                "code": str(now.get("code", notebook.info_code)),
                "message": now.get("message", notebook.info_message),
            },
        },
        "url": console_url(notebook.project, f"notebooks/{notebook.pk}/"),
    }


def notify(
    project: Project,
    kind: Kind,
    subject: str,
    message: str = "",
    data: dict | None = None,
    *,
    key: str = "",
    targets=None,
) -> Notice | None:
    """Record a notice and send it to each of the project's targets that wants it (or to
    `targets`), once the caller's transaction commits. With a `key`, a notice of the
    same project, kind and key is sent once only: a repeat returns None."""
    data = {"url": console_url(project), **(data or {})}
    if key and Notice.objects.filter(project=project, kind=kind, key=key).exists():
        return None
    with transaction.atomic():
        try:
            with transaction.atomic():
                notice = Notice.objects.create(
                    project=project,
                    kind=kind,
                    key=key,
                    subject=subject[:300],
                    message=message,
                    data=data,
                )
        except IntegrityError:
            if key and Notice.objects.filter(project=project, kind=kind, key=key).exists():
                return None
            raise
        if targets is None:
            targets = [t for t in project.notice_targets.all() if t.wants(kind)]
        deliveries = Delivery.objects.bulk_create(
            [Delivery(notice=notice, target=target) for target in targets]
        )
        for delivery in deliveries:
            dispatch.deliver_notice(delivery.pk)
    log.info("notice %s (%s) to %d target(s): %s", notice.pk, kind, len(deliveries), subject)
    return notice


def send_test(target: NoticeTarget, user) -> Delivery:
    """A test notice to one target, so its owner sees it arrive (and the log fill)."""
    notice = notify(
        target.project,
        Kind.TEST,
        f"Test notice for {target.name}",
        f"{user.get_username() if user else 'Someone'} sent this test notice from project "
        f"{target.project.name}: notices reach this {target.type}.",
        targets=[target],
    )
    return notice.deliveries.get()


# Delivering.


def retry_delay(attempts: int) -> int:
    """Seconds to wait after the `attempts`-th failed attempt."""
    delay = settings.NBCLOUD_NOTICE_RETRY_DELAY * 2 ** max(attempts - 1, 0)
    return min(delay, settings.NBCLOUD_NOTICE_RETRY_MAX)


class _GiveUp(Exception):
    """A failure that no retry mends (a refused destination, no mail server)."""


def deliver(delivery_id: int, now: datetime | None = None) -> int | None:
    """One attempt at a delivery. Returns the seconds to wait before the next attempt,
    or None when there is none to make (delivered, given up, gone, or taken by another
    worker)."""
    now = now or timezone.now()
    delivery = (
        Delivery.objects.select_related("notice__project", "target").filter(pk=delivery_id).first()
    )
    if delivery is None or delivery.state not in CLAIMABLE_STATES:
        return None
    due = delivery.next_attempt_at
    if delivery.state == DeliveryState.RETRYING and due and due > now + timedelta(seconds=2):
        return None  # a second message for it (resent while its retry was on the way)
    # Claim this attempt: of two workers given the same delivery, one sends it.
    claimed = Delivery.objects.filter(
        pk=delivery.pk, state=delivery.state, attempts=delivery.attempts
    ).update(
        state=DeliveryState.SENDING,
        attempts=F("attempts") + 1,
        last_attempt_at=now,
        next_attempt_at=now + SENDING_LEASE,
    )
    if not claimed:
        return None
    attempts = delivery.attempts + 1
    try:
        status = _send(delivery)
    except _GiveUp as exc:
        _finish(delivery, DeliveryState.FAILED, error=str(exc))
        return None
    except Exception as exc:
        error = str(exc) or type(exc).__name__
        if attempts >= settings.NBCLOUD_NOTICE_ATTEMPTS:
            _finish(delivery, DeliveryState.FAILED, error=f"{error} (gave up after {attempts})")
            return None
        delay = retry_delay(attempts)
        _finish(
            delivery,
            DeliveryState.RETRYING,
            error=error,
            status=getattr(exc, "status", None),
            next_attempt_at=timezone.now() + timedelta(seconds=delay),
        )
        log.info(
            "delivery %s failed (%s); attempt %d in %d s", delivery.pk, error, attempts + 1, delay
        )
        return delay
    _finish(delivery, DeliveryState.DELIVERED, status=status, delivered_at=timezone.now())
    return None


def _finish(delivery: Delivery, state: str, *, error: str = "", **fields) -> None:
    Delivery.objects.filter(pk=delivery.pk, state=DeliveryState.SENDING).update(
        state=state,
        last_error=error[:2000],
        response_status=fields.pop("status", None),
        next_attempt_at=fields.pop("next_attempt_at", None),
        **fields,
    )


class HTTPFailure(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(f"HTTP {status}: {text[:300]}" if text.strip() else f"HTTP {status}")
        self.status = status


def _send(delivery: Delivery) -> int | None:
    target = delivery.target
    if target.type == NoticeTarget.Type.EMAIL:
        _send_email(delivery)
        return None
    body = json.dumps(payload(delivery), separators=(",", ":"), sort_keys=True).encode()
    timestamp = int(time.time())
    headers = {
        webhooks.EVENT_HEADER: delivery.notice.kind,
        webhooks.DELIVERY_HEADER: str(delivery.pk),
        webhooks.TIMESTAMP_HEADER: str(timestamp),
        webhooks.SIGNATURE_HEADER: webhooks.sign(target.secret(), timestamp, body),
    }
    try:
        status, text = webhooks.post(target.url, body, headers, settings.NBCLOUD_NOTICE_TIMEOUT)
    except webhooks.Refused as exc:
        raise _GiveUp(str(exc)) from None
    if not 200 <= status < 300:
        raise HTTPFailure(status, text)
    return status


def payload(delivery: Delivery) -> dict:
    """The JSON body of a webhook delivery (docs/notices.md)."""
    notice = delivery.notice
    return {
        "id": str(notice.pk),
        "delivery": delivery.pk,
        "kind": notice.kind,
        "project": notice.project.name,
        "created_at": notice.created_at.isoformat(),
        "subject": notice.subject,
        "message": notice.message,
        "data": notice.data,
    }


def _send_email(delivery: Delivery) -> None:
    if not settings.EMAIL_HOST:
        raise _GiveUp("this platform sends no email: its operator has not set EMAIL_HOST")
    notice, target = delivery.notice, delivery.target
    link = notice.data.get("url", "")
    body = "\n\n".join(
        part
        for part in (
            notice.message or notice.subject,
            link,
            f"-- \nnbcloud sends this to {target.address} because an owner of project "
            f"{notice.project.name} set up the notice target {target.name!r}. Change it at "
            f"{console_url(notice.project, 'notices/')}",
        )
        if part
    )
    message = EmailMessage(
        subject=f"[nbcloud] {notice.project.name}: {notice.subject}",
        body=body,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[target.address],
        headers={"X-Nbcloud-Event": notice.kind, "X-Nbcloud-Delivery": str(delivery.pk)},
    )
    try:
        message.send()
    except smtplib.SMTPRecipientsRefused as exc:
        raise _GiveUp(f"the mail server refused {target.address}: {exc.recipients}") from None


def prune(now: datetime | None = None) -> int:
    """Remove notices (and their deliveries) older than NBCLOUD_NOTICE_RETENTION_DAYS,
    but none with a delivery still to make; returns how many notices went."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.NBCLOUD_NOTICE_RETENTION_DAYS)
    old = Notice.objects.filter(created_at__lt=cutoff).exclude(deliveries__state__in=OPEN_STATES)
    return (
        Notice.objects.filter(pk__in=list(old.values_list("pk", flat=True)[:1000]))
        .delete()[1]
        .get("notices.Notice", 0)
    )


def resend_overdue(now: datetime | None = None) -> int:
    """Send again the deliveries whose retry never came (its message lost) or whose
    worker died while sending; returns how many."""
    now = now or timezone.now()
    grace = timedelta(seconds=max(settings.NBCLOUD_RECONCILE_INTERVAL, 60))
    overdue = list(
        Delivery.objects.filter(
            state__in=[DeliveryState.RETRYING, DeliveryState.SENDING],
            next_attempt_at__lt=now - grace,
        ).values_list("pk", "state")[:500]
    )
    sent = 0
    for pk, state in overdue:
        with transaction.atomic():
            again = Delivery.objects.filter(pk=pk, state=state).update(
                state=DeliveryState.RETRYING, next_attempt_at=now
            )
            if again:
                dispatch.deliver_notice(pk)
                sent += 1
    return sent
