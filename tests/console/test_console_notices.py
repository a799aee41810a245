"""The console's Notices page (owners): add an email or webhook target, the webhook's
secret shown once, refused URLs beside their field, a test notice, the delivery log
polled with htmx. Other roles are refused (test_console_tenancy.py covers every URL)."""

import html
import ipaddress

import pytest

from nbcloud.notices import services
from nbcloud.notices.models import Delivery, NoticeTarget
from nbcloud.projects.models import Role

from .console_support import person, signed_in

pytestmark = pytest.mark.django_db
PAGE = "/projects/alpha/notices/"


@pytest.fixture
def owner(django_user_model, alpha):
    return signed_in(person(django_user_model, "olga", alpha, Role.OWNER))


@pytest.fixture
def loopback(settings):
    settings.NBCLOUD_WEBHOOK_ALLOWED_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"),)


def test_owners_find_notices_in_the_project_tabs(owner, django_user_model, alpha):
    assert 'href="/projects/alpha/notices/"' in owner.get("/projects/alpha/").content.decode()
    operator = signed_in(person(django_user_model, "alice", alpha, Role.OPERATOR))
    assert "/notices/" not in operator.get("/projects/alpha/").content.decode()
    assert operator.get(PAGE).status_code == 403


def test_a_webhook_secret_is_shown_once(owner, loopback):
    reply = owner.post(
        PAGE,
        {
            "name": "ops",
            "type": "webhook",
            "url": "http://127.0.0.1:9/hook",
            "kinds": ["host.lost"],
        },
    )
    assert reply.status_code == 200
    target = NoticeTarget.objects.get()
    secret = target.secret()
    assert secret.startswith("whsec_") and secret in reply.content.decode()
    assert target.kinds == ["host.lost"] and target.enabled
    page = owner.get(PAGE).content.decode()
    assert secret not in page and "http://127.0.0.1:9/hook" in page and "host.lost" in page
    rotated = owner.post(f"{PAGE}{target.pk}/secret/")
    target.refresh_from_db()
    assert target.secret() != secret and target.secret() in rotated.content.decode()


def test_a_webhook_to_the_platforms_network_is_refused_beside_its_field(owner):
    reply = owner.post(PAGE, {"name": "meta", "type": "webhook", "url": "http://169.254.169.254/"})
    assert reply.status_code == 400
    body = html.unescape(reply.content.decode())
    assert "public addresses only" in body and 'value="meta"' in body
    assert not NoticeTarget.objects.exists()


def test_an_email_target_is_added_tested_and_logged(owner, alpha, settings):
    settings.EMAIL_HOST = "127.0.0.1"
    reply = owner.post(PAGE, {"name": "me", "type": "email", "address": "olga@example.com"})
    assert reply.status_code == 302
    target = NoticeTarget.objects.get()
    assert target.address == "olga@example.com" and target.kinds == []
    assert owner.post(f"{PAGE}{target.pk}/test/").status_code == 302
    delivery = Delivery.objects.get()
    assert delivery.notice.kind == "test"
    log = owner.get(f"{PAGE}log/").content.decode()
    assert log.startswith('<div id="deliveries"') and 'hx-trigger="every 5s"' in log
    assert "Test notice for me" in log and "PENDING" in log
    Delivery.objects.filter(pk=delivery.pk).update(
        state="RETRYING", attempts=1, last_error="the mail server said no"
    )
    assert "the mail server said no" in owner.get(PAGE).content.decode()


def test_a_target_is_turned_off_and_deleted(owner, alpha, settings):
    target = NoticeTarget.objects.create(project=alpha, name="me", type="email", address="o@x.org")
    owner.post(f"{PAGE}{target.pk}/toggle/")
    target.refresh_from_db()
    assert not target.enabled
    assert services.notify(alpha, "host.lost", "Host h lost").deliveries.count() == 0
    assert owner.get(f"{PAGE}{target.pk}/delete/").status_code == 200
    assert owner.post(f"{PAGE}{target.pk}/delete/").status_code == 302
    assert not NoticeTarget.objects.exists()


def test_another_projects_target_is_404(owner, bravo):
    theirs = NoticeTarget.objects.create(project=bravo, name="t", type="email", address="b@x.org")
    for url in (
        f"{PAGE}{theirs.pk}/test/",
        f"{PAGE}{theirs.pk}/toggle/",
        f"{PAGE}{theirs.pk}/delete/",
    ):
        assert owner.post(url).status_code == 404, url
    assert NoticeTarget.objects.get().enabled
