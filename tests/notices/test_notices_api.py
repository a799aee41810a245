"""Notice targets through the API: owners only, secrets shown once, webhook URLs that
could reach the platform's own network refused, and the delivery log."""

import ipaddress

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from nbcloud.notebooks.models import NotebookGrant
from nbcloud.notices import services
from nbcloud.notices.models import Delivery, Kind, NoticeTarget
from nbcloud.projects.models import ApiToken, Role
from support.factories import api_client, make_member, make_notebook

pytestmark = pytest.mark.django_db
BASE = "/api/v1/projects/alpha/notice-targets/"
LOG = "/api/v1/projects/alpha/notice-deliveries/"


@pytest.fixture
def olga(django_user_model, alpha):
    return make_member(django_user_model, "olga", alpha, Role.OWNER)


@pytest.fixture
def owner_api(olga):
    """The owner as a person (the API's session), not through an app token."""
    client = APIClient()
    client.force_authenticate(olga[0])
    return client


def hook(owner_api, url, **fields):
    return owner_api.post(
        BASE, {"name": "ops", "type": "webhook", "url": url, **fields}, format="json"
    )


def test_an_owner_adds_a_webhook_and_sees_its_secret_once(
    owner_api, webhook_receiver, loopback_allowed
):
    reply = hook(owner_api, webhook_receiver.url(), kinds=["notebook.failed", "host.lost"])
    assert reply.status_code == 201, reply.content
    secret = reply.json()["secret"]
    assert secret.startswith("whsec_") and len(secret) > 40
    target = NoticeTarget.objects.get()
    assert target.secret() == secret and secret not in target.sealed_secret
    assert reply.json()["kinds"] == ["host.lost", "notebook.failed"]
    listed = owner_api.get(BASE).json()["results"]
    shown = owner_api.get(f"{BASE}{target.pk}/")
    assert secret not in str(listed) and secret not in shown.content.decode()
    assert "secret" not in shown.json()


def test_rotating_the_secret_shows_the_new_one_once(owner_api, webhook_receiver, loopback_allowed):
    first = hook(owner_api, webhook_receiver.url()).json()
    rotated = owner_api.post(f"{BASE}{first['id']}/rotate-secret/")
    assert rotated.status_code == 201
    assert rotated.json()["secret"] not in (first["secret"], "")
    assert NoticeTarget.objects.get().secret() == rotated.json()["secret"]


def test_an_email_target_needs_an_address_and_a_mail_server(owner_api, settings):
    settings.EMAIL_HOST = ""
    reply = owner_api.post(
        BASE, {"name": "me", "type": "email", "address": "o@example.com"}, format="json"
    )
    assert reply.status_code == 400 and "EMAIL_HOST" in reply.content.decode()
    settings.EMAIL_HOST = "127.0.0.1"
    missing = owner_api.post(BASE, {"name": "me", "type": "email"})
    assert missing.status_code == 400 and "required for a email target" in missing.content.decode()
    reply = owner_api.post(
        BASE, {"name": "me", "type": "email", "address": "o@example.com"}, format="json"
    )
    assert reply.status_code == 201 and "secret" not in reply.json()
    assert reply.json()["kinds"] == [] and reply.json()["enabled"] is True


def test_an_owner_changes_and_deletes_a_target(owner_api, settings):
    settings.EMAIL_HOST = "127.0.0.1"
    made = owner_api.post(BASE, {"name": "me", "type": "email", "address": "o@example.com"})
    url = f"{BASE}{made.json()['id']}/"
    changed = owner_api.patch(url, {"enabled": False, "kinds": ["budget.exceeded"]}, format="json")
    assert changed.status_code == 200 and changed.json()["enabled"] is False
    assert owner_api.patch(url, {"type": "webhook"}).status_code == 400
    assert owner_api.patch(url, {"url": "https://example.com/"}).status_code == 400
    assert owner_api.put(url, {}).status_code == 405
    assert owner_api.delete(url).status_code == 204
    assert not NoticeTarget.objects.exists()


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://127.0.0.1:8000/api/", "loopback"),
        ("http://localhost/", "loopback"),
        ("http://[::1]:9/", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://100.64.0.5/", "reserved"),
        ("http://0.0.0.0/", "reserved"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("ftp://example.com/x", "http or https only"),
        ("file:///etc/passwd", "http or https only"),
        ("gopher://127.0.0.1:6379/_FLUSHALL", "http or https only"),
        ("javascript:alert(1)", "http or https only"),
        ("https://user:pw@example.com/", "user name or password"),
        ("https:///nohost", "names no host"),
        ("http://example.com:99999/", "not a URL"),
    ],
)
def test_a_webhook_that_could_reach_the_platforms_network_is_refused(owner_api, url, why):
    reply = hook(owner_api, url)
    assert reply.status_code == 400, (url, reply.content)
    message = reply.json()["fields"]["url"][0] if "fields" in reply.json() else str(reply.json())
    assert why.split()[0] in message or why in message, message
    assert not NoticeTarget.objects.exists()


def test_the_default_refuses_loopback_and_the_operators_setting_allows_it(
    owner_api, webhook_receiver, settings
):
    assert settings.NBCLOUD_WEBHOOK_ALLOWED_NETWORKS == ()
    refused = hook(owner_api, webhook_receiver.url())
    assert refused.status_code == 400
    assert "NBCLOUD_WEBHOOK_ALLOWED_NETWORKS" in refused.content.decode()
    settings.NBCLOUD_WEBHOOK_ALLOWED_NETWORKS = (ipaddress.ip_network("127.0.0.1/32"),)
    assert hook(owner_api, webhook_receiver.url()).status_code == 201


def test_a_destination_refused_at_delivery_is_given_up_not_retried(
    owner_api, webhook_receiver, loopback_allowed, settings
):
    target_id = hook(owner_api, webhook_receiver.url()).json()["id"]
    target = NoticeTarget.objects.get(pk=target_id)
    settings.NBCLOUD_WEBHOOK_ALLOWED_NETWORKS = ()  # the operator closed it since
    delivery = services.send_test(target, None)
    assert services.deliver(delivery.pk) is None
    delivery.refresh_from_db()
    assert delivery.state == "FAILED" and "public addresses only" in delivery.last_error
    assert webhook_receiver.requests == []


def test_unknown_fields_and_kinds_are_named(owner_api, loopback_allowed, webhook_receiver):
    reply = hook(owner_api, webhook_receiver.url(), kinds=["budget.exploded"], colour="red")
    assert reply.status_code == 400
    body = reply.content.decode()
    assert "budget.exploded" in body
    reply = hook(owner_api, webhook_receiver.url(), colour="red")
    assert reply.status_code == 400 and "colour" in reply.content.decode()
    hook(owner_api, webhook_receiver.url())
    again = hook(owner_api, webhook_receiver.url())
    assert (
        again.status_code == 400 and "already has a notice target 'ops'" in again.content.decode()
    )


@pytest.fixture
def a_target(olga, alpha, webhook_receiver, loopback_allowed):
    target = NoticeTarget(project=alpha, name="ops", type="webhook", url=webhook_receiver.url())
    target.new_secret()
    target.save()
    return target


def test_only_owners_manage_notices(
    a_target, alice_api, bob_api, charlie_api, alpha, olga, django_user_model
):
    """An operator, a reader, app tokens (even the owner's) and a person a notebook is
    shared with are all refused; another project's member sees nothing."""
    token, value = ApiToken.issue(project=alpha, user=olga[0], name="ci", role="operator")
    guest, _ = django_user_model.objects.get_or_create(username="gus")
    NotebookGrant.objects.create(
        notebook=make_notebook(alpha, name="shared"), user=guest, role="operator"
    )
    guest_api = APIClient()
    guest_api.force_authenticate(guest)
    detail = f"{BASE}{a_target.pk}/"
    calls = [
        ("get", BASE, {}),
        ("post", BASE, {"name": "x", "type": "webhook", "url": "https://example.com/"}),
        ("get", detail, {}),
        ("patch", detail, {"enabled": False}),
        ("delete", detail, {}),
        ("post", f"{detail}test/", {}),
        ("post", f"{detail}rotate-secret/", {}),
        ("get", LOG, {}),
    ]
    for client, expected in (
        (alice_api, 403),
        (bob_api, 403),
        (api_client(value), 403),
        (api_client(olga[1]), 403),  # even a token of the owner's
        (guest_api, 404),
        (charlie_api, 404),
    ):
        for method, url, data in calls:
            reply = getattr(client, method)(url, data, format="json")
            assert reply.status_code == expected, (method, url, reply.content)
    a_target.refresh_from_db()
    assert a_target.enabled and NoticeTarget.objects.count() == 1 and not Delivery.objects.exists()


def test_the_test_action_sends_a_notice_to_that_target_only(owner_api, a_target, alpha):
    other = NoticeTarget.objects.create(
        project=alpha, name="other", type="email", address="x@example.com"
    )
    reply = owner_api.post(f"{BASE}{a_target.pk}/test/")
    assert reply.status_code == 202
    assert reply.json()["kind"] == "test" and reply.json()["state"] == "PENDING"
    assert list(Delivery.objects.values_list("target", flat=True)) == [a_target.pk]
    assert not other.deliveries.exists()


def test_the_delivery_log_lists_newest_first_and_filters_by_target(owner_api, a_target, alpha):
    other = NoticeTarget.objects.create(
        project=alpha, name="mail", type="email", address="x@example.com"
    )
    for n in range(5):
        services.notify(alpha, Kind.NOTEBOOK_FAILED, f"Notebook nb{n} FAILED", "It broke.")
    with CaptureQueriesContext(connection) as queries:
        reply = owner_api.get(LOG)
    assert reply.status_code == 200
    rows = reply.json()["results"]
    assert len(rows) == 10 and rows[0]["subject"] == "Notebook nb4 FAILED"
    assert {r["target_name"] for r in rows} == {"ops", "mail"}
    assert len(queries) <= 8, [q["sql"] for q in queries.captured_queries]
    only = owner_api.get(LOG, {"target": other.pk}).json()["results"]
    assert len(only) == 5 and {r["target"] for r in only} == {other.pk}
    assert owner_api.get(LOG, {"target": "x"}).status_code == 400


def test_the_log_shows_nothing_of_another_project(owner_api, bravo):
    theirs = NoticeTarget.objects.create(
        project=bravo, name="t", type="email", address="b@example.com"
    )
    services.notify(bravo, Kind.HOST_LOST, "Host h lost")
    assert owner_api.get(LOG).json()["results"] == []
    assert owner_api.get(f"{BASE}{theirs.pk}/").status_code == 404


def test_an_owner_signed_in_with_a_password_uses_the_api_with_the_csrf_token(
    olga, webhook_receiver, loopback_allowed
):
    """What docs/notices.md shows with curl: sign in, then send the CSRF token."""
    olga[0].set_password("a long enough password")
    olga[0].save()
    client = Client(enforce_csrf_checks=True)
    client.get("/accounts/login/")
    csrf = client.cookies["csrftoken"].value
    signed = client.post(
        "/accounts/login/",
        {"csrfmiddlewaretoken": csrf, "username": "olga", "password": "a long enough password"},
    )
    assert signed.status_code == 302
    body = {"name": "ops", "type": "webhook", "url": webhook_receiver.url()}
    refused = client.post(BASE, body, content_type="application/json")
    assert refused.status_code == 403 and "CSRF" in refused.content.decode()
    csrf = client.cookies["csrftoken"].value
    made = client.post(BASE, body, content_type="application/json", HTTP_X_CSRFTOKEN=csrf)
    assert made.status_code == 201 and made.json()["secret"].startswith("whsec_")
