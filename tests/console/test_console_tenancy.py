"""Tenancy and roles: every console URL of a project answers 404 to a member of another
project; a `read` member sees no action buttons and every action URL answers 403; every
form needs its CSRF token."""

import re
import uuid

import pytest

from nbcloud.console.models import Invitation
from nbcloud.notebooks.models import Backup
from nbcloud.notebooks.states import State
from nbcloud.notices.models import Delivery, NoticeTarget
from nbcloud.projects.models import ApiToken, Datastore, Role
from support.factories import make_notebook

from .console_support import person, signed_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(django_user_model, alpha, bravo):
    """alpha's owner, operator and reader, bravo's owner, and one of everything in alpha."""
    people = {
        "owner": person(django_user_model, "olga", alpha, Role.OWNER),
        "operator": person(django_user_model, "alice", alpha, Role.OPERATOR),
        "read": person(django_user_model, "bob", alpha, Role.READ),
        "outsider": person(django_user_model, "charlie", bravo, Role.OWNER),
    }
    stopped = make_notebook(alpha, name="stopped", state=State.STOPPED, labels={"team": "a"})
    backup = Backup.objects.create(
        notebook=stopped, storage_name="x", size=1, sha256="0" * 64, workspace_size=1
    )
    token, _ = ApiToken.issue(project=alpha, user=people["owner"], name="ci", role="read")
    store = Datastore(project=alpha, alias="store", type="s3", access_key="k")
    store.set_secrets({"secret_key": "s"})
    store.save()
    invitation, _ = Invitation.issue(project=alpha, role="read", created_by=people["owner"])
    target = NoticeTarget(project=alpha, name="ops", type="webhook", url="https://example.com/")
    target.new_secret()
    target.save()
    return {
        **people,
        "target": target,
        "notebook": stopped,
        "backup": backup,
        "token": token,
        "invitation": invitation,
    }


def page_urls(w) -> list[str]:
    """Every page of project alpha a member may look at (GET)."""
    nb = f"/projects/alpha/notebooks/{w['notebook'].pk}"
    return [
        "/projects/alpha/",
        "/projects/alpha/notebooks/rows/",
        f"{nb}/",
        f"{nb}/status/",
        f"{nb}/metrics/",
        "/projects/alpha/usage/",
        "/projects/alpha/usage.csv",
        "/projects/alpha/quota/",
        "/projects/alpha/members/",
    ]


def action_urls(w) -> list[tuple[str, str, dict]]:
    """Every action of project alpha: (method, URL, form data)."""
    nb = f"/projects/alpha/notebooks/{w['notebook'].pk}"
    return [
        ("get", "/projects/alpha/notebooks/new/", {}),
        ("post", "/projects/alpha/notebooks/new/", {"name": "x"}),
        ("get", "/projects/alpha/notebooks/new/row/", {}),
        ("post", f"{nb}/start/", {}),
        ("post", f"{nb}/stop/", {}),
        ("get", f"{nb}/delete/", {}),
        ("post", f"{nb}/delete/", {}),
        ("post", f"{nb}/backups/{w['backup'].pk}/fork/", {}),
        ("post", f"{nb}/command/", {"command": "id"}),
        ("get", "/projects/alpha/tokens/", {}),
        ("post", "/projects/alpha/tokens/", {"name": "t", "role": "read"}),
        ("post", f"/projects/alpha/tokens/{w['token'].pk}/renew/", {}),
        ("get", f"/projects/alpha/tokens/{w['token'].pk}/delete/", {}),
        ("post", f"/projects/alpha/tokens/{w['token'].pk}/delete/", {}),
        ("get", "/projects/alpha/datastores/", {}),
        ("post", "/projects/alpha/datastores/", {"alias": "x", "type": "git", "host": "h"}),
        ("get", "/projects/alpha/datastores/store/delete/", {}),
        ("post", "/projects/alpha/datastores/store/delete/", {}),
        ("post", "/projects/alpha/members/", {"role": "owner"}),
        ("post", f"/projects/alpha/members/{w['operator'].pk}/", {"role": "owner"}),
        ("post", f"/projects/alpha/invitations/{w['invitation'].pk}/delete/", {}),
        ("get", "/projects/alpha/notices/", {}),
        ("get", "/projects/alpha/notices/log/", {}),
        ("post", "/projects/alpha/notices/", {"name": "x", "type": "email", "address": "x@y.org"}),
        ("post", f"/projects/alpha/notices/{w['target'].pk}/test/", {}),
        ("post", f"/projects/alpha/notices/{w['target'].pk}/toggle/", {}),
        ("post", f"/projects/alpha/notices/{w['target'].pk}/secret/", {}),
        ("get", f"/projects/alpha/notices/{w['target'].pk}/delete/", {}),
        ("post", f"/projects/alpha/notices/{w['target'].pk}/delete/", {}),
    ]


def unchanged(w) -> None:
    w["notebook"].refresh_from_db()
    assert w["notebook"].state == State.STOPPED
    assert ApiToken.objects.filter(pk=w["token"].pk, key_hash=w["token"].key_hash).exists()
    assert Datastore.objects.filter(alias="store").exists()
    assert Invitation.objects.filter(pk=w["invitation"].pk).exists()
    assert w["notebook"].project.role_of(w["operator"]) == Role.OPERATOR
    target = NoticeTarget.objects.get(pk=w["target"].pk)
    assert target.enabled and target.sealed_secret == w["target"].sealed_secret
    assert not Delivery.objects.exists()


def test_every_url_of_a_project_is_404_to_a_member_of_another(world):
    client = signed_in(world["outsider"])
    for url in page_urls(world):
        assert client.get(url).status_code == 404, url
    for method, url, data in action_urls(world):
        assert getattr(client, method)(url, data).status_code == 404, (method, url)
    unchanged(world)


def test_a_read_member_sees_every_page_but_no_action(world):
    client = signed_in(world["read"])
    for url in page_urls(world):
        reply = client.get(url)
        assert reply.status_code == 200, url
        body = reply.content.decode()
        for word in (
            ">Start<",
            ">Stop<",
            ">Delete<",
            "New notebook",
            "Fork into",
            "Change</button>",
        ):
            assert word not in body, (url, word)
    for method, url, data in action_urls(world):
        assert getattr(client, method)(url, data).status_code == 403, (method, url)
    unchanged(world)


def test_an_operator_runs_notebooks_but_does_not_manage_the_project(world):
    client = signed_in(world["operator"])
    assert client.get("/projects/alpha/notebooks/new/").status_code == 200
    for method, url, data in action_urls(world):
        if "/notebooks/" in url:
            continue
        assert getattr(client, method)(url, data).status_code == 403, (method, url)
    body = client.get("/projects/alpha/").content.decode()
    assert ">Start<" in body and ">Delete<" in body and "Tokens" not in body


def test_a_notebook_of_another_project_is_404_inside_ones_own(world, bravo):
    theirs = make_notebook(bravo, name="theirs", state=State.STOPPED)
    client = signed_in(world["owner"])
    assert client.get(f"/projects/alpha/notebooks/{theirs.pk}/").status_code == 404
    assert client.post(f"/projects/alpha/notebooks/{theirs.pk}/delete/").status_code == 404
    assert client.get(f"/projects/alpha/notebooks/{uuid.uuid4()}/").status_code == 404
    assert client.get("/projects/alpha/notebooks/not-a-uuid/").status_code == 404
    assert client.get("/projects/nope/").status_code == 404


def test_every_form_needs_its_csrf_token(world):
    client = signed_in(world["owner"], csrf_checks=True)
    for method, url, data in action_urls(world):
        if method == "post":
            assert client.post(url, data).status_code == 403, url
    assert client.post("/accounts/logout/").status_code == 403
    assert client.post("/accounts/password/", {}).status_code == 403
    unchanged(world)
    # With the token the page gave, the same form works.
    page = client.get(f"/projects/alpha/notebooks/{world['notebook'].pk}/delete/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())[1]
    reply = client.post(
        f"/projects/alpha/notebooks/{world['notebook'].pk}/delete/",
        {"csrfmiddlewaretoken": token},
    )
    assert reply.status_code == 302
    world["notebook"].refresh_from_db()
    assert world["notebook"].state == State.DELETED
