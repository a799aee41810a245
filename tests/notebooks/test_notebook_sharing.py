"""Sharing one notebook with one person: a read or operator grant, by its owner.

Alice (operator of alpha) owns the notebooks; Bob is a read member of alpha;
Dave is in no project at all.
"""

import pytest
from rest_framework.test import APIClient

from nbcloud.gateway.authorize import authorize
from nbcloud.notebooks.models import Notebook

BASE = "/api/v1/projects/alpha/notebooks/"
SPEC = {
    "name": "shared",
    "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
    "resources": {"cpu": 1},
}

pytestmark = pytest.mark.django_db


def _session(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


@pytest.fixture
def dave(django_user_model):
    return django_user_model.objects.create_user("dave", password="pw-not-used-1")


@pytest.fixture
def owner(alice):
    return _session(alice[0])


@pytest.fixture
def notebooks(owner, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        shared = owner.post(BASE, SPEC, format="json").json()
        other = owner.post(BASE, {**SPEC, "name": "other"}, format="json").json()
    return shared, other


def _share(client, notebook, username, role):
    return client.post(
        f"{BASE}{notebook['id']}/grants/", {"username": username, "role": role}, format="json"
    )


def test_owner_shares_read_with_an_outsider_who_sees_only_that_notebook(owner, notebooks, dave):
    shared, other = notebooks
    reply = _share(owner, shared, "dave", "read")
    assert reply.status_code == 201, reply.content
    assert reply.json()[0]["username"] == "dave" and reply.json()[0]["granted_by"] == "alice"

    guest = _session(dave)
    assert guest.get(f"{BASE}{shared['id']}/").status_code == 200
    assert [n["id"] for n in guest.get(BASE).json()["results"]] == [shared["id"]]
    assert guest.get(f"{BASE}{other['id']}/").status_code == 404
    assert guest.post(f"{BASE}{shared['id']}/stop/").status_code == 403
    assert guest.post(BASE, SPEC, format="json").status_code == 403
    # Nothing else of the project opens to a guest.
    for path in ("quota/", "usage/", "tokens/", ""):
        assert guest.get(f"/api/v1/projects/alpha/{path}").status_code == 404, path


def test_operator_grant_lets_a_read_member_act_on_that_notebook_only(
    owner, notebooks, bob, django_capture_on_commit_callbacks
):
    shared, other = notebooks
    assert _share(owner, shared, "bob", "operator").status_code == 201
    member = _session(bob[0])
    with django_capture_on_commit_callbacks(execute=False):
        assert member.post(f"{BASE}{shared['id']}/stop/").status_code == 202
        assert member.post(f"{BASE}{other['id']}/stop/").status_code == 403
    assert Notebook.objects.get(pk=shared["id"]).state == "STOPPED"
    assert Notebook.objects.get(pk=other["id"]).state == "QUEUED"


def test_grants_do_not_extend_tokens(owner, notebooks, bob, django_capture_on_commit_callbacks):
    shared, _ = notebooks
    _share(owner, shared, "bob", "operator")
    token = APIClient()
    token.credentials(HTTP_AUTHORIZATION=f"Bearer {bob[1]}")  # bob's read token
    with django_capture_on_commit_callbacks(execute=False):
        assert token.post(f"{BASE}{shared['id']}/stop/").status_code == 403


def test_only_the_owner_or_an_operator_shares(owner, notebooks, bob, dave):
    shared, _ = notebooks
    assert _share(_session(bob[0]), shared, "dave", "read").status_code == 403
    _share(owner, shared, "dave", "operator")
    assert (
        _share(_session(dave), shared, "bob", "operator").status_code == 403
    )  # guests don't re-share
    unknown = _share(owner, shared, "nobody", "read")
    assert unknown.status_code == 400 and "nobody" in unknown.json()["message"]
    bad_role = _share(owner, shared, "dave", "admin")
    assert bad_role.status_code == 400 and "role" in bad_role.json()["fields"]


def test_revoking_closes_the_notebook_again(owner, notebooks, dave):
    shared, _ = notebooks
    _share(owner, shared, "dave", "read")
    assert owner.delete(f"{BASE}{shared['id']}/grants/dave/").status_code == 204
    assert _session(dave).get(f"{BASE}{shared['id']}/").status_code == 404
    assert owner.delete(f"{BASE}{shared['id']}/grants/dave/").status_code == 404


def test_gateway_admits_a_guest_by_session(owner, notebooks, dave, client, settings):
    # The grant is what is tested: notebooks on the platform's own origin, where a
    # session cookie is sent (on their own origins, a hand-off turns it into theirs).
    settings.NBCLOUD_NOTEBOOK_DOMAIN = ""
    shared, other = notebooks
    _share(owner, shared, "dave", "read")
    client.force_login(dave)
    session = {"sessionid": client.cookies["sessionid"].value}
    for notebook, expected in ((shared, 503), (other, 404)):  # 503: shared, but not RUNNING
        decision = authorize(notebook["id"], method="GET", host="testserver", cookies=session)
        assert decision.status == expected, (notebook["spec"]["name"], decision)
