"""App tokens through the API: create, list, renew, delete, expiry, roles, tenancy,
and label-scoped tokens that reach only the notebooks their selector matches.

No worker runs here: calls that would send a task run inside
django_capture_on_commit_callbacks(execute=False), so nothing reaches a broker.
"""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from nbcloud.api.access import notebook_visible, token_allows
from nbcloud.notebooks.models import Notebook
from nbcloud.projects.models import ApiToken, Role, hash_token

pytestmark = pytest.mark.django_db

TOKENS = "/api/v1/projects/alpha/tokens/"
NOTEBOOKS = "/api/v1/projects/alpha/notebooks/"
SPEC = {
    "name": "demo",
    "env": {"framework_id": "pytorch", "editor_id": "jupyterlab"},
    "resources": {"cpu": 1},
}
LISTED = {
    "id",
    "project",
    "name",
    "role",
    "label_selector",
    "user",
    "key_prefix",
    "created_at",
    "expires_at",
    "expired",
    "last_used_at",
}


def bearer(value: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {value}")
    return client


def assert_error(reply, status: int, code: str) -> dict:
    assert reply.status_code == status, reply.content
    body = reply.json()
    expected = {"code", "message", "fields"} if code == "invalid" else {"code", "message"}
    assert set(body) == expected, body
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return body


def mint(api, **fields) -> dict:
    reply = api.post(TOKENS, {"name": "ci", "role": "operator", **fields}, format="json")
    assert reply.status_code == 201, reply.content
    return reply.json()


def in_an_hour() -> str:
    return (timezone.now() + timedelta(hours=1)).isoformat()


@pytest.fixture
def quiet(django_capture_on_commit_callbacks):
    """Captures the tasks that API calls send on commit, and never runs them."""

    def capture():
        return django_capture_on_commit_callbacks(execute=False)

    return capture


@pytest.fixture
def notebook_of(alice_api, quiet):
    def create(api=None, name="demo", **fields) -> dict:
        with quiet():
            reply = (api or alice_api).post(
                NOTEBOOKS, {**SPEC, "name": name, **fields}, format="json"
            )
        assert reply.status_code == 201, reply.content
        return reply.json()

    return create


# Creating, listing, using.


def test_create_shows_the_value_once_and_it_works(alice_api, alice):
    reply = alice_api.post(TOKENS, {"name": "ci", "role": "read"}, format="json")
    assert reply.status_code == 201, reply.content
    body = reply.json()
    assert set(body) == LISTED | {"value"}
    value = body["value"]
    assert value.startswith(ApiToken.PREFIX) and body["key_prefix"] == value[:8]
    assert body["name"] == "ci" and body["role"] == "read" and body["label_selector"] == ""
    assert body["user"] == "alice" and body["project"] == "alpha"
    assert body["expires_at"] is None and body["expired"] is False
    # Stored hashed, belonging to the requesting user.
    token = ApiToken.objects.get(pk=body["id"])
    assert token.key_hash == hash_token(value) and token.user == alice[0]
    assert value not in {str(v) for v in ApiToken.objects.values_list().get(pk=token.pk)}
    # It works as a bearer token, with its role.
    client = bearer(value)
    assert client.get(NOTEBOOKS).status_code == 200
    assert client.get("/api/v1/projects/alpha/quota/").json()["role"] == "read"
    assert ApiToken.objects.get(pk=token.pk).last_used_at is not None
    # The list and the token's own page never show a value.
    listed = alice_api.get(TOKENS)
    assert listed.status_code == 200
    assert value not in listed.content.decode()
    rows = listed.json()["results"]
    assert {row["name"] for row in rows} == {"alice-operator", "ci"}
    assert all(set(row) == LISTED for row in rows)
    one = alice_api.get(f"{TOKENS}{token.pk}/")
    assert one.status_code == 200 and set(one.json()) == LISTED
    assert value not in one.content.decode()


def test_create_with_selector_and_expiry(alice_api):
    expires = timezone.now() + timedelta(days=7)
    body = mint(
        alice_api, label_selector=" team = vision ,env!=prod", expires_at=expires.isoformat()
    )
    assert body["label_selector"] == "team=vision,env!=prod"
    token = ApiToken.objects.get(pk=body["id"])
    assert abs(token.expires_at - expires) < timedelta(seconds=1)
    assert token.selector_terms == [("team", "=", "vision"), ("env", "!=", "prod")]


@pytest.mark.parametrize(
    "fields, field, words",
    [
        ({"role": "read"}, "name", ["required"]),
        ({"name": "x"}, "role", ["required"]),
        ({"name": "x", "role": "admin"}, "role", ["admin"]),
        ({"name": "x", "role": "read", "label_selector": "team"}, "label_selector", ["team"]),
        (
            {"name": "x", "role": "read", "label_selector": "team=a,team=b"},
            "label_selector",
            ["twice"],
        ),
        (
            {"name": "x", "role": "read", "label_selector": "nbcloud/owner=me"},
            "label_selector",
            ["reserved"],
        ),
        ({"name": "x", "role": "read", "expires_at": "tomorrow"}, "expires_at", ["format"]),
        ({"name": "x", "role": "read", "labels": {"team": "a"}}, "request", ["labels"]),
    ],
)
def test_create_refuses_invalid_input(alice_api, fields, field, words):
    body = assert_error(alice_api.post(TOKENS, fields, format="json"), 400, "invalid")
    assert field in body["fields"], body
    for word in words:
        assert word in body["message"], body
    assert ApiToken.objects.count() == 1  # alice's own


def test_expiry_in_the_past_is_refused(alice_api):
    past = (timezone.now() - timedelta(minutes=1)).isoformat()
    body = assert_error(
        alice_api.post(TOKENS, {"name": "x", "role": "read", "expires_at": past}, format="json"),
        400,
        "invalid",
    )
    assert "expires_at" in body["fields"] and "future" in body["message"]


def test_expired_token_is_401(alice_api):
    body = mint(alice_api, expires_at=in_an_hour())
    client = bearer(body["value"])
    assert client.get(NOTEBOOKS).status_code == 200
    ApiToken.objects.filter(pk=body["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    reply = assert_error(client.get(NOTEBOOKS), 401, "authentication_failed")
    assert "expired" in reply["message"]
    assert alice_api.get(f"{TOKENS}{body['id']}/").json()["expired"] is True


# Renewing and deleting.


def test_renew_replaces_the_value_at_once(alice_api):
    body = mint(alice_api)
    old = bearer(body["value"])
    assert old.get(NOTEBOOKS).status_code == 200
    reply = alice_api.post(f"{TOKENS}{body['id']}/renew/", {}, format="json")
    assert reply.status_code == 201, reply.content
    renewed = reply.json()
    assert set(renewed) == LISTED | {"value"}
    assert renewed["id"] == body["id"] and renewed["value"] != body["value"]
    assert renewed["key_prefix"] == renewed["value"][:8]
    assert_error(old.get(NOTEBOOKS), 401, "authentication_failed")
    assert bearer(renewed["value"]).get(NOTEBOOKS).status_code == 200
    assert ApiToken.objects.get(pk=body["id"]).key_hash == hash_token(renewed["value"])


def test_renew_sets_keeps_or_clears_the_expiry(alice_api):
    body = mint(alice_api, expires_at=in_an_hour())
    renew = f"{TOKENS}{body['id']}/renew/"
    kept = alice_api.post(renew, {}, format="json").json()
    assert kept["expires_at"] == body["expires_at"]
    later = timezone.now() + timedelta(days=30)
    moved = alice_api.post(renew, {"expires_at": later.isoformat()}, format="json").json()
    assert abs(ApiToken.objects.get(pk=body["id"]).expires_at - later) < timedelta(seconds=1)
    assert moved["expires_at"] != body["expires_at"]
    cleared = alice_api.post(renew, {"expires_at": None}, format="json").json()
    assert cleared["expires_at"] is None
    past = (timezone.now() - timedelta(minutes=1)).isoformat()
    assert_error(alice_api.post(renew, {"expires_at": past}, format="json"), 400, "invalid")


def test_renewing_an_expired_token_needs_a_new_expiry(alice_api):
    body = mint(alice_api, expires_at=in_an_hour())
    ApiToken.objects.filter(pk=body["id"]).update(expires_at=timezone.now() - timedelta(hours=1))
    renew = f"{TOKENS}{body['id']}/renew/"
    reply = assert_error(alice_api.post(renew, {}, format="json"), 400, "invalid")
    assert "expires_at" in reply["fields"] and "expired" in reply["message"]
    renewed = alice_api.post(renew, {"expires_at": in_an_hour()}, format="json")
    assert renewed.status_code == 201, renewed.content
    assert bearer(renewed.json()["value"]).get(NOTEBOOKS).status_code == 200


def test_delete_stops_the_token_at_once(alice_api):
    body = mint(alice_api)
    client = bearer(body["value"])
    assert client.get(NOTEBOOKS).status_code == 200
    reply = alice_api.delete(f"{TOKENS}{body['id']}/")
    assert reply.status_code == 204, reply.content
    assert_error(client.get(NOTEBOOKS), 401, "authentication_failed")
    assert not ApiToken.objects.filter(pk=body["id"]).exists()
    assert_error(alice_api.get(f"{TOKENS}{body['id']}/"), 404, "not_found")


def test_a_token_may_delete_itself(alice_api):
    body = mint(alice_api)
    client = bearer(body["value"])
    assert client.delete(f"{TOKENS}{body['id']}/").status_code == 204
    assert_error(client.get(TOKENS), 401, "authentication_failed")


# Roles and tenancy.


def test_read_role_may_not_manage_tokens(alice_api, bob_api):
    target = mint(alice_api)
    item = f"{TOKENS}{target['id']}/"
    for reply in (
        bob_api.get(TOKENS),
        bob_api.get(item),
        bob_api.post(TOKENS, {"name": "x", "role": "read"}, format="json"),
        bob_api.post(f"{item}renew/", {}, format="json"),
        bob_api.delete(item),
    ):
        body = assert_error(reply, 403, "forbidden")
        assert "operator" in body["message"]
    assert ApiToken.objects.filter(pk=target["id"], key_hash=hash_token(target["value"])).exists()
    assert ApiToken.objects.count() == 3  # alice's, bob's, ci


def test_another_project_gets_404(alice_api, charlie_api, charlie):
    target = mint(alice_api)
    item = f"{TOKENS}{target['id']}/"
    for reply in (
        charlie_api.get(TOKENS),
        charlie_api.get(item),
        charlie_api.post(TOKENS, {"name": "x", "role": "operator"}, format="json"),
        charlie_api.post(f"{item}renew/", {}, format="json"),
        charlie_api.delete(item),
    ):
        assert_error(reply, 404, "not_found")
    # Nor through its own project's URL.
    bravo = "/api/v1/projects/bravo/tokens/"
    assert_error(charlie_api.get(f"{bravo}{target['id']}/"), 404, "not_found")
    assert_error(charlie_api.delete(f"{bravo}{target['id']}/"), 404, "not_found")
    assert [t["name"] for t in charlie_api.get(bravo).json()["results"]] == ["charlie-operator"]
    # And alpha cannot reach bravo's tokens.
    charlies = ApiToken.objects.get(user=charlie[0])
    assert_error(alice_api.get(f"{TOKENS}{charlies.pk}/"), 404, "not_found")
    assert bearer(target["value"]).get("/api/v1/projects/bravo/notebooks/").status_code == 404


def test_no_credentials_is_401(alice):
    assert_error(APIClient().get(TOKENS), 401, "not_authenticated")


# Label-scoped tokens and notebooks.


@pytest.fixture
def vision(alice_api) -> APIClient:
    """An operator token limited to team=vision notebooks."""
    return bearer(mint(alice_api, name="vision", label_selector="team=vision")["value"])


def test_scoped_token_lists_only_matching_notebooks(notebook_of, vision):
    ours = notebook_of(name="ours", labels={"team": "vision", "env": "dev"})
    notebook_of(name="theirs", labels={"team": "nlp"})
    notebook_of(name="unlabelled")
    reply = vision.get(NOTEBOOKS)
    assert reply.status_code == 200
    assert [nb["id"] for nb in reply.json()["results"]] == [ours["id"]]
    # The list's own filters narrow further, never widen.
    assert vision.get(NOTEBOOKS, {"label_selector": "team=nlp"}).json()["results"] == []
    assert len(vision.get(NOTEBOOKS, {"label_selector": "env=dev"}).json()["results"]) == 1


def test_scoped_token_gets_404_for_a_notebook_it_does_not_match(notebook_of, vision, quiet):
    theirs = notebook_of(labels={"team": "nlp"})
    item = f"{NOTEBOOKS}{theirs['id']}/"
    with quiet() as sent:
        replies = [
            vision.get(item),
            vision.get(f"{item}events/"),
            vision.get(f"{item}backups/"),
            vision.patch(item, {"labels": {"team": "vision"}}, format="json"),
            vision.post(f"{item}stop/"),
            vision.post(f"{item}start/"),
            vision.delete(item),
        ]
    for reply in replies:
        assert_error(reply, 404, "not_found")
    assert sent == []
    stored = Notebook.objects.get(pk=theirs["id"])
    assert (stored.state, stored.labels) == ("QUEUED", {"team": "nlp"})


def test_scoped_token_may_act_on_a_matching_notebook(notebook_of, vision, quiet):
    ours = notebook_of(labels={"team": "vision"})
    item = f"{NOTEBOOKS}{ours['id']}/"
    assert vision.get(item).status_code == 200
    assert vision.get(f"{item}backups/").status_code == 200
    with quiet():
        reply = vision.post(f"{item}stop/")
    assert reply.status_code == 202, reply.content
    assert reply.json()["status"]["state"] == "STOPPED"


def test_notebooks_created_with_a_scoped_token_get_its_labels(notebook_of, vision, alice_api):
    body = notebook_of(vision, labels={"env": "dev"})
    assert body["spec"]["labels"] == {"team": "vision", "env": "dev"}
    assert Notebook.objects.get(pk=body["id"]).labels == {"team": "vision", "env": "dev"}
    # Restating the selector's label is fine.
    again = notebook_of(vision, name="again", labels={"team": "vision"})
    assert again["spec"]["labels"] == {"team": "vision"}
    # And the token sees what it created.
    assert len(vision.get(NOTEBOOKS).json()["results"]) == 2


def test_a_conflicting_label_is_400_naming_it(vision, quiet):
    with quiet() as sent:
        reply = vision.post(NOTEBOOKS, {**SPEC, "labels": {"team": "nlp"}}, format="json")
    body = assert_error(reply, 400, "invalid")
    assert "labels.team" in body["fields"], body
    assert "team=vision" in body["message"] and "nlp" in body["message"]
    assert sent == [] and not Notebook.objects.exists()


def test_a_label_against_a_not_equal_term_is_400(alice_api, quiet):
    scoped = bearer(mint(alice_api, label_selector="env!=prod")["value"])
    with quiet():
        refused = scoped.post(NOTEBOOKS, {**SPEC, "labels": {"env": "prod"}}, format="json")
        allowed = scoped.post(NOTEBOOKS, {**SPEC, "labels": {"env": "dev"}}, format="json")
    body = assert_error(refused, 400, "invalid")
    assert "labels.env" in body["fields"] and "env!=prod" in body["message"]
    assert allowed.status_code == 201 and allowed.json()["spec"]["labels"] == {"env": "dev"}


def test_patching_labels_out_of_the_selector_is_403(notebook_of, vision):
    ours = notebook_of(vision)
    item = f"{NOTEBOOKS}{ours['id']}/"
    for labels in ({"team": "nlp"}, {}, {"env": "dev"}):
        body = assert_error(vision.patch(item, {"labels": labels}, format="json"), 403, "forbidden")
        assert "team=vision" in body["message"]
    assert Notebook.objects.get(pk=ours["id"]).labels == {"team": "vision"}
    # Labels that keep it in reach are fine.
    reply = vision.patch(item, {"labels": {"team": "vision", "env": "dev"}}, format="json")
    assert reply.status_code == 200, reply.content
    assert reply.json()["spec"]["labels"] == {"team": "vision", "env": "dev"}


def test_unscoped_callers_are_unaffected(notebook_of, alice_api, bob_api):
    notebook_of(labels={"team": "vision"})
    notebook_of(name="b", labels={"team": "nlp"})
    for api in (alice_api, bob_api):
        assert len(api.get(NOTEBOOKS).json()["results"]) == 2


# A token may not give out more power than it has.


def test_scoped_token_cannot_mint_a_broader_token(vision):
    for selector in ("", "team=nlp", "env=dev", "team!=vision"):
        reply = vision.post(
            TOKENS,
            {"name": "wider", "role": "operator", "label_selector": selector},
            format="json",
        )
        body = assert_error(reply, 403, "forbidden")
        assert "team=vision" in body["message"] and "label_selector" in body["message"]
    assert not ApiToken.objects.filter(name="wider").exists()
    # As narrow or narrower is fine, and stays narrow.
    narrower = mint(vision, name="narrower", role="read", label_selector="env=dev,team=vision")
    assert narrower["label_selector"] == "env=dev,team=vision"
    assert narrower["user"] == "alice"
    same = mint(vision, name="same", label_selector="team==vision")
    assert same["label_selector"] == "team=vision"


def test_scoped_token_sees_and_renews_only_tokens_within_its_scope(alice_api, vision):
    unscoped = mint(alice_api, name="unscoped")
    nlp = mint(alice_api, name="nlp", label_selector="team=nlp")
    inside = mint(alice_api, name="inside", label_selector="team=vision,env=dev")
    names = {t["name"] for t in vision.get(TOKENS).json()["results"]}
    assert names == {"vision", "inside"}
    for other in (unscoped, nlp):
        item = f"{TOKENS}{other['id']}/"
        assert_error(vision.get(item), 404, "not_found")
        assert_error(vision.post(f"{item}renew/", {}, format="json"), 404, "not_found")
        assert_error(vision.delete(item), 404, "not_found")
        assert bearer(other["value"]).get(NOTEBOOKS).status_code == 200
    reply = vision.post(f"{TOKENS}{inside['id']}/renew/", {}, format="json")
    assert reply.status_code == 201, reply.content


def test_expiring_token_cannot_mint_a_longer_lived_token(alice_api):
    soon = timezone.now() + timedelta(hours=1)
    expiring = bearer(mint(alice_api, name="short", expires_at=soon.isoformat())["value"])
    for expires_at in (None, (soon + timedelta(days=1)).isoformat()):
        reply = expiring.post(
            TOKENS, {"name": "long", "role": "read", "expires_at": expires_at}, format="json"
        )
        body = assert_error(reply, 403, "forbidden")
        assert "expires" in body["message"]
    # Left out, the expiry is the calling token's.
    inherited = mint(expiring, name="inherits")
    assert abs(ApiToken.objects.get(pk=inherited["id"]).expires_at - soon) < timedelta(seconds=1)
    # A token without expiry is out of its reach.
    forever = mint(alice_api, name="forever")
    assert_error(expiring.post(f"{TOKENS}{forever['id']}/renew/"), 404, "not_found")


# The model and the shared access functions.


def test_model_allows_issue_and_renew(alice):
    user = alice[0]
    token, value = ApiToken.issue(
        project=user.memberships.get().project,
        user=user,
        name="m",
        role=Role.READ,
        label_selector="team=vision, env!=prod",
    )
    assert token.label_selector == "team=vision,env!=prod"
    assert token.allows({"team": "vision"}) and token.allows({"team": "vision", "env": "dev"})
    assert not token.allows({"team": "vision", "env": "prod"}) and not token.allows({})
    unscoped, _ = ApiToken.issue(project=token.project, user=user, name="u", role=Role.READ)
    assert unscoped.allows({}) and unscoped.allows({"anything": "at-all"})
    new = token.renew()
    assert new != value and ApiToken.objects.get(pk=token.pk).key_hash == hash_token(new)
    assert not ApiToken.objects.filter(key_hash=hash_token(value)).exists()
    assert token.expires_at is None
    later = timezone.now() + timedelta(days=1)
    token.renew(expires_at=later)
    assert ApiToken.objects.get(pk=token.pk).expires_at == later


def test_token_allows_and_notebook_visible(alice, notebook_of, alice_api):
    scoped, _ = ApiToken.issue(
        project=alice[0].memberships.get().project,
        user=alice[0],
        name="s",
        role=Role.OPERATOR,
        label_selector="team=vision",
    )
    assert token_allows(scoped, {"team": "vision"}) and not token_allows(scoped, {"team": "x"})
    assert token_allows(None, {}) and token_allows(object(), {"team": "x"})
    unscoped = ApiToken.objects.get(name="alice-operator")
    assert token_allows(unscoped, {"team": "x"})

    class Request:
        def __init__(self, auth):
            self.auth, self.user = auth, alice[0]

    ours = Notebook.objects.get(pk=notebook_of(labels={"team": "vision"})["id"])
    theirs = Notebook.objects.get(pk=notebook_of(name="b", labels={"team": "nlp"})["id"])
    assert notebook_visible(Request(scoped), ours) and not notebook_visible(Request(scoped), theirs)
    assert notebook_visible(Request(unscoped), theirs)


def test_admin_shows_the_label_selector(admin_client, alice_api):
    mint(alice_api, name="scoped-one", label_selector="team=vision")
    page = admin_client.get("/admin/projects/apitoken/").content.decode()
    assert "scoped-one" in page and "team=vision" in page
    assert admin_client.get("/admin/projects/apitoken/add/").status_code == 403


def test_schema_has_the_token_paths():
    paths = APIClient().get("/api/v1/schema/", {"format": "json"}).json()["paths"]
    base = "/api/v1/projects/{project}/tokens/"
    assert {"get", "post"} <= set(paths[base])
    assert {"get", "delete"} <= set(paths[base + "{id}/"])
    assert "post" in paths[base + "{id}/renew/"]
