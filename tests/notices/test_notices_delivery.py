"""Delivering notices to real receivers on loopback, in this process: a webhook signed
with HMAC-SHA256 that verifies as docs/notices.md says, email through a real SMTP
server, retries with backoff, and nothing sent for a change that rolls back.

The Celery task is called here as the worker would call it; the end-to-end test
(test_notices_e2e.py) runs it in a real worker."""

import hashlib
import hmac
import ipaddress
import json
import time
from datetime import timedelta

import pytest
from celery.exceptions import Retry
from django.db import transaction
from django.utils import timezone

from nbcloud import tasks
from nbcloud.dispatch.models import OutboxMessage
from nbcloud.notices import services, webhooks
from nbcloud.notices.models import Delivery, Kind, Notice, NoticeTarget
from support.metrics import samples
from support.receivers import WebhookReceiver, certificates
from workers.runtimes.process import free_port

pytestmark = pytest.mark.django_db


def verify(secret: str, headers: dict, body: bytes, tolerance: int = 300) -> bool:
    """A receiver's check, as docs/notices.md gives it."""
    timestamp = headers["X-Nbcloud-Timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(f"sha256={expected.hexdigest()}", headers["X-Nbcloud-Signature"])


@pytest.fixture
def hook(alpha, webhook_receiver, loopback_allowed):
    target = NoticeTarget(project=alpha, name="ops", type="webhook", url=webhook_receiver.url())
    target.secret_value = target.new_secret()
    target.save()
    return target


@pytest.fixture
def mailbox(alpha, mail_to):
    NoticeTarget.objects.create(project=alpha, name="me", type="email", address="olga@example.com")
    return mail_to


def only_delivery() -> Delivery:
    return Delivery.objects.select_related("notice").get()


def test_a_webhook_is_signed_and_the_signature_verifies(
    alpha, hook, webhook_receiver, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks():
        services.notify(
            alpha, Kind.NOTEBOOK_FAILED, "Notebook train FAILED", "The editor died.", {"x": 1}
        )
    delivery = only_delivery()
    assert services.deliver(delivery.pk) is None
    [request] = webhook_receiver.requests
    assert request.path == "/hook"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Nbcloud-Event"] == "notebook.failed"
    assert request.headers["X-Nbcloud-Delivery"] == str(delivery.pk)
    assert verify(hook.secret_value, request.headers, request.body)
    assert not verify("whsec_wrong", request.headers, request.body)
    assert not verify(hook.secret_value, request.headers, request.body + b" ")
    body = request.json()
    assert body["kind"] == "notebook.failed" and body["project"] == "alpha"
    assert body["id"] == str(delivery.notice_id) and body["delivery"] == delivery.pk
    assert body["subject"] == "Notebook train FAILED" and body["message"] == "The editor died."
    assert body["data"]["x"] == 1 and body["data"]["url"].endswith("/projects/alpha/")
    delivery.refresh_from_db()
    assert delivery.state == "DELIVERED" and delivery.response_status == 200
    assert delivery.attempts == 1 and delivery.delivered_at is not None


def test_the_signature_covers_the_timestamp():
    body = b'{"a":1}'
    assert webhooks.sign("s", 1, body) != webhooks.sign("s", 2, body)
    assert webhooks.sign("s", 1, body) == (
        "sha256=" + hmac.new(b"s", b'1.{"a":1}', hashlib.sha256).hexdigest()
    )


def test_an_email_goes_through_a_real_smtp_server(alpha, mailbox):
    services.notify(
        alpha,
        Kind.BUDGET_EXCEEDED,
        "Monthly budget of 100 EUR reached",
        "Project alpha has spent 100 EUR.",
        {"url": "http://platform.example/projects/alpha/usage/"},
    )
    assert services.deliver(only_delivery().pk) is None
    [mail] = mailbox.messages
    assert mail["To"] == "olga@example.com"
    assert mail["Subject"] == "[nbcloud] alpha: Monthly budget of 100 EUR reached"
    assert mail["X-Nbcloud-Event"] == "budget.exceeded"
    text = mail.get_content()
    assert "Project alpha has spent 100 EUR." in text
    assert "http://platform.example/projects/alpha/usage/" in text
    assert "notice target 'me'" in text and "/projects/alpha/notices/" in text
    assert only_delivery().state == "DELIVERED"


def test_a_mail_server_that_is_down_is_retried(alpha, mailbox, settings):
    settings.EMAIL_PORT = free_port()  # nothing listens there
    settings.NBCLOUD_NOTICE_RETRY_DELAY = 7
    services.notify(alpha, Kind.HOST_LOST, "Host h1 lost")
    assert services.deliver(only_delivery().pk) == 7
    delivery = only_delivery()
    assert delivery.state == "RETRYING" and delivery.attempts == 1
    assert "Connection refused" in delivery.last_error
    assert mailbox.messages == []


def test_a_receiver_that_fails_first_is_retried_with_backoff_until_it_answers(
    alpha, hook, webhook_receiver, settings
):
    settings.NBCLOUD_NOTICE_RETRY_DELAY = 5
    settings.NBCLOUD_NOTICE_RETRY_MAX = 15
    webhook_receiver.answers = [503, 500, 502]
    services.notify(alpha, Kind.IDLE_WARNING, "Notebook nb is idle")
    delivery = only_delivery()
    delays = []
    for _ in range(4):
        Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
        delays.append(services.deliver(delivery.pk))
    assert delays == [5, 10, 15, None]  # doubling, capped, then delivered
    delivery.refresh_from_db()
    assert delivery.state == "DELIVERED" and delivery.attempts == 4
    assert len(webhook_receiver.requests) == 4
    # Every attempt is the same notice under the same delivery id, signed afresh.
    ids = {r.headers["X-Nbcloud-Delivery"] for r in webhook_receiver.requests}
    assert ids == {str(delivery.pk)}


def test_the_task_asks_celery_to_retry_with_the_delay(alpha, hook, webhook_receiver, settings):
    settings.NBCLOUD_NOTICE_RETRY_DELAY = 9
    webhook_receiver.answers = [500]
    services.notify(alpha, Kind.IDLE_WARNING, "Notebook nb is idle")
    delivery = only_delivery()
    with pytest.raises(Retry) as retry:
        tasks.deliver_notice.apply(args=(delivery.pk,), throw=True)
    assert retry.value.when == 9
    delivery.refresh_from_db()
    assert delivery.state == "RETRYING" and delivery.response_status == 500
    assert "HTTP 500: try again later" in delivery.last_error


def test_a_delivery_gives_up_after_its_attempts(alpha, hook, webhook_receiver, settings):
    settings.NBCLOUD_NOTICE_ATTEMPTS = 2
    webhook_receiver.answers = [500, 500, 500]
    services.notify(alpha, Kind.HOST_LOST, "Host h1 lost")
    delivery = only_delivery()
    assert services.deliver(delivery.pk) is not None
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    assert services.deliver(delivery.pk) is None
    delivery.refresh_from_db()
    assert delivery.state == "FAILED" and "gave up after 2" in delivery.last_error
    assert services.deliver(delivery.pk) is None  # a late message changes nothing
    assert len(webhook_receiver.requests) == 2


def test_a_second_message_for_the_same_attempt_sends_nothing(alpha, hook, webhook_receiver):
    services.notify(alpha, Kind.HOST_LOST, "Host h1 lost")
    delivery = only_delivery()
    assert services.deliver(delivery.pk) is None
    assert services.deliver(delivery.pk) is None
    assert len(webhook_receiver.requests) == 1


def test_a_retry_not_yet_due_is_left_to_its_own_message(alpha, hook, webhook_receiver, settings):
    webhook_receiver.answers = [500]
    services.notify(alpha, Kind.HOST_LOST, "Host h1 lost")
    delivery = only_delivery()
    assert services.deliver(delivery.pk) == settings.NBCLOUD_NOTICE_RETRY_DELAY
    assert services.deliver(delivery.pk) is None  # early: a duplicate message
    assert len(webhook_receiver.requests) == 1


def test_notify_sends_through_the_outbox_after_commit(
    alpha, hook, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as sent:
        services.notify(alpha, Kind.NOTEBOOK_FAILED, "Notebook nb FAILED")
        [kept] = OutboxMessage.objects.all()
    assert kept.name == "notices.deliver" and kept.args == [only_delivery().pk]
    assert len(sent) == 1


def test_nothing_is_sent_for_a_change_that_rolls_back(alpha, hook):
    with pytest.raises(RuntimeError), transaction.atomic():
        services.notify(alpha, Kind.NOTEBOOK_FAILED, "Notebook nb FAILED")
        raise RuntimeError("the change failed")
    assert not Notice.objects.exists() and not OutboxMessage.objects.exists()


def test_a_keyed_notice_is_sent_once(alpha, hook):
    first = services.notify(alpha, Kind.BUDGET_WARNING, "80% spent", key="2026-11:100EUR")
    again = services.notify(alpha, Kind.BUDGET_WARNING, "80% spent", key="2026-11:100EUR")
    assert first is not None and again is None
    assert Delivery.objects.count() == 1


def test_targets_get_the_kinds_they_asked_for_and_none_when_disabled(alpha, hook, settings):
    settings.EMAIL_HOST = "127.0.0.1"
    NoticeTarget.objects.create(
        project=alpha,
        name="budget-only",
        type="email",
        address="a@example.com",
        kinds=["budget.exceeded"],
    )
    NoticeTarget.objects.create(
        project=alpha, name="off", type="email", address="b@example.com", enabled=False
    )
    services.notify(alpha, Kind.NOTEBOOK_FAILED, "Notebook nb FAILED")
    services.notify(alpha, Kind.BUDGET_EXCEEDED, "Budget reached")
    got = sorted(Delivery.objects.values_list("target__name", "notice__kind"))
    assert got == [
        ("budget-only", "budget.exceeded"),
        ("ops", "budget.exceeded"),
        ("ops", "notebook.failed"),
    ]


def test_an_email_without_a_mail_server_is_given_up_with_the_reason(alpha, settings):
    settings.EMAIL_HOST = ""
    NoticeTarget.objects.create(project=alpha, name="me", type="email", address="o@example.com")
    services.notify(alpha, Kind.HOST_LOST, "Host h1 lost")
    assert services.deliver(only_delivery().pk) is None
    assert only_delivery().state == "FAILED" and "EMAIL_HOST" in only_delivery().last_error


def test_a_lost_retry_is_sent_again_by_the_sweep(alpha, hook, django_capture_on_commit_callbacks):
    services.notify(alpha, Kind.HOST_LOST, "Host h1 lost")
    delivery = only_delivery()
    long_ago = timezone.now() - timedelta(hours=1)
    Delivery.objects.filter(pk=delivery.pk).update(state="SENDING", next_attempt_at=long_ago)
    OutboxMessage.objects.all().delete()
    with django_capture_on_commit_callbacks():
        assert services.resend_overdue() == 1
    assert only_delivery().state == "RETRYING"
    assert [m.args for m in OutboxMessage.objects.all()] == [[delivery.pk]]
    assert services.resend_overdue() == 0  # sent again just now: not overdue yet


def test_the_payload_is_json_with_sorted_keys(alpha, hook, webhook_receiver):
    services.notify(alpha, Kind.HOST_LOST, "Host h1 lost", data={"b": 1, "a": 2})
    services.deliver(only_delivery().pk)
    body = webhook_receiver.requests[0].body
    assert json.loads(body)["data"] == {"a": 2, "b": 1, "url": json.loads(body)["data"]["url"]}
    assert body == json.dumps(json.loads(body), separators=(",", ":"), sort_keys=True).encode()


def test_old_notices_are_pruned_but_not_those_still_being_delivered(alpha, hook, settings):
    settings.NBCLOUD_NOTICE_RETENTION_DAYS = 30
    old_done = services.notify(alpha, Kind.HOST_LOST, "Host h1 lost")
    old_open = services.notify(alpha, Kind.HOST_LOST, "Host h2 lost")
    recent = services.notify(alpha, Kind.HOST_LOST, "Host h3 lost")
    long_ago = timezone.now() - timedelta(days=31)
    Notice.objects.filter(pk__in=[old_done.pk, old_open.pk]).update(created_at=long_ago)
    old_done.deliveries.update(state="DELIVERED")
    assert services.prune() == 1
    assert set(Notice.objects.values_list("pk", flat=True)) == {old_open.pk, recent.pk}
    assert Delivery.objects.count() == 2


def test_an_https_webhook_is_checked_against_its_host_name(alpha, settings, tmp_path, monkeypatch):
    """The request goes to a checked address, with TLS verified for the URL's name: a
    certificate for `localhost` is good for https://localhost/, not for the bare IP."""
    settings.NBCLOUD_WEBHOOK_ALLOWED_NETWORKS = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    ca_file, context = certificates(tmp_path, "localhost")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # the platform trusts the test's CA
    receiver = WebhookReceiver(tls=context).start()
    try:
        for name, host in (("by-name", "localhost"), ("by-ip", "127.0.0.1")):
            target = NoticeTarget(
                project=alpha, name=name, type="webhook", url=f"https://{host}:{receiver.port}/h"
            )
            target.new_secret()
            target.save()
        services.notify(alpha, Kind.HOST_LOST, "Host h1 lost")
        for delivery in Delivery.objects.all():
            services.deliver(delivery.pk)
        states = dict(Delivery.objects.values_list("target__name", "state"))
        assert states == {"by-name": "DELIVERED", "by-ip": "RETRYING"}
        assert "certificate" in Delivery.objects.get(target__name="by-ip").last_error.lower()
        [request] = receiver.requests
        assert request.headers["Host"] == f"localhost:{receiver.port}"
    finally:
        receiver.stop()


def test_metrics_count_deliveries_by_state(alpha, hook, client, settings):
    settings.NBCLOUD_METRICS_TOKEN = "metrics-secret"
    services.notify(alpha, Kind.HOST_LOST, "Host h1 lost")
    services.notify(alpha, Kind.HOST_LOST, "Host h2 lost")
    Delivery.objects.filter(pk=Delivery.objects.order_by("pk").first().pk).update(state="FAILED")
    reply = client.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-secret")
    found = samples(reply.content.decode())
    assert found[("nbcloud_notice_deliveries", (("state", "FAILED"),))] == 1
    assert found[("nbcloud_notice_deliveries", (("state", "PENDING"),))] == 1
    assert found[("nbcloud_notice_deliveries", (("state", "DELIVERED"),))] == 0
