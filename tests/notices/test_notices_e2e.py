"""Notices through a real control worker (`celery -A nbcloud worker -Q control`) on the
real broker: a webhook whose receiver fails first is retried by Celery after the backoff
and then delivered, signed; an email reaches a real SMTP server."""

import hashlib
import hmac

import pytest

from nbcloud.notices import services
from nbcloud.notices.models import Delivery, Kind, NoticeTarget
from support.services import (
    CELERY,
    purge_queues,
    queues_to_ourselves,
    service_env,
    start_service,
    stop_service,
)
from support.waiting import wait_for

pytestmark = pytest.mark.e2e
RETRY_DELAY = 2


@pytest.fixture
def control_worker(transactional_db, broker_url, worker_host, public_url, smtp_server):
    with queues_to_ourselves(["control"]):
        yield from _control_worker(broker_url, worker_host, public_url, smtp_server)


def _control_worker(broker_url, worker_host, public_url, smtp_server):
    purge_queues(broker_url, ["control"])
    env = {
        **service_env(broker_url, worker_host, public_url),
        "NBCLOUD_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
        "NBCLOUD_NOTICE_RETRY_DELAY": str(RETRY_DELAY),
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(smtp_server.port),
    }
    argv = [CELERY, "-A", "nbcloud", "worker", "-Q", "control", "-c", "1"]
    argv += ["-n", f"notices-{worker_host}@%h", "--loglevel", "INFO"]
    proc = start_service("notices-worker", argv, env, lambda out: b"ready." in out)
    yield proc
    stop_service(proc)


def test_a_worker_retries_a_failing_webhook_with_backoff_and_sends_mail(
    control_worker, alpha, webhook_receiver, smtp_server, loopback_allowed, mail_to
):
    hook = NoticeTarget(project=alpha, name="ops", type="webhook", url=webhook_receiver.url())
    secret = hook.new_secret()
    hook.save()
    NoticeTarget.objects.create(project=alpha, name="me", type="email", address="o@example.com")
    webhook_receiver.answers = [503]

    notice = services.notify(alpha, Kind.NOTEBOOK_FAILED, "Notebook train FAILED", "It broke.")

    def settled():
        states = list(notice.deliveries.values_list("state", flat=True))
        return len(states) == 2 and set(states) <= {"DELIVERED", "FAILED"} and states

    assert set(wait_for(settled, timeout=60, what="both deliveries settled")) == {"DELIVERED"}
    webhook = Delivery.objects.get(target=hook)
    assert webhook.attempts == 2 and webhook.response_status == 200
    first, second = webhook_receiver.requests
    assert second.at - first.at >= RETRY_DELAY - 0.5  # Celery waited the backoff
    assert first.body == second.body
    timestamp = second.headers["X-Nbcloud-Timestamp"]
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + second.body, hashlib.sha256)
    assert second.headers["X-Nbcloud-Signature"] == f"sha256={mac.hexdigest()}"
    [mail] = smtp_server.messages
    assert mail["To"] == "o@example.com"
    assert mail["Subject"] == "[nbcloud] alpha: Notebook train FAILED"
