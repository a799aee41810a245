"""The notebook REST API: creation, validation, filters, actions, tenancy, errors.

No worker runs here: tasks are sent on commit, and these tests run inside a
transaction that never commits, so nothing reaches a broker.
"""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from nbcloud.notebooks import services
from nbcloud.notebooks.models import Notebook, NotebookEvent
from nbcloud.projects.models import ApiToken

pytestmark = pytest.mark.django_db

BASE = "/api/v1/projects/alpha/notebooks/"
SPEC = {"name": "demo", "env": {"framework_id": "pytorch", "editor_id": "jupyterlab"}}
CPU_SPEC = {**SPEC, "resources": {"cpu": 1}}


def assert_error(reply, status: int, code: str) -> dict:
    """Every error answers the one shape: code + message (+ fields on invalid input)."""
    assert reply.status_code == status, reply.content
    body = reply.json()
    expected = {"code", "message", "fields"} if code == "invalid" else {"code", "message"}
    assert set(body) == expected, body
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    if code == "invalid":
        assert status == 400
        assert isinstance(body["fields"], dict) and body["fields"]
    return body


def create(api, spec=None, **overrides):
    reply = api.post(BASE, {**(spec or CPU_SPEC), **overrides}, format="json")
    assert reply.status_code == 201, reply.content
    return reply.json()


def url(notebook: dict, suffix: str = "") -> str:
    return f"{BASE}{notebook['id']}/{suffix}"


# Creation.


def test_create_answers_201_with_spec_status_and_defaults(alice_api, alice):
    reply = alice_api.post(BASE, SPEC, format="json")
    assert reply.status_code == 201, reply.content
    body = reply.json()
    assert set(body) >= {"id", "project", "spec", "status", "created_at", "created_by"}
    assert body["project"] == "alpha"
    assert body["created_by"] == "alice"
    spec = body["spec"]
    assert spec["name"] == "demo"
    assert spec["env"] == {
        "framework_id": "pytorch",
        "framework_version": "2.13",
        "editor_id": "jupyterlab",
    }
    assert spec["resources"] == {"flavor": "ai1-1-gpu", "gpu": 1, "cpu": 0}
    assert spec["region"] == "GRA"
    assert spec["labels"] == {} and spec["volumes"] == [] and spec["env_vars"] == []
    assert spec["unsecure_http"] is False
    status = body["status"]
    assert status["state"] == "QUEUED"
    assert set(status["info"]) == {"code", "message"}
    assert status["url"] is None and status["host"] is None
    notebook = Notebook.objects.get(pk=body["id"])
    assert notebook.events.count() == 1
    event = notebook.events.get()
    assert (event.from_state, event.to_state) == ("", "QUEUED")


def test_create_cpu_notebook_takes_the_cpu_flavor(alice_api):
    body = create(alice_api, CPU_SPEC, region="BHS")
    assert body["spec"]["resources"] == {"flavor": "ai1-1-cpu", "gpu": 0, "cpu": 1}
    assert body["spec"]["region"] == "BHS"


INVALID = [
    # (what to change, field path, words the message must hold)
    (
        {"env": {"framework_id": "nope", "editor_id": "jupyterlab"}},
        "env.framework_id",
        ["nope", "valid choices", "pytorch", "tensorflow", "conda"],
    ),
    (
        {"env": {"framework_id": "pytorch", "editor_id": "emacs"}},
        "env.editor_id",
        ["emacs", "valid choices", "jupyterlab", "vscode"],
    ),
    (
        {"env": {"framework_id": "pytorch", "framework_version": "9.9", "editor_id": "vscode"}},
        "env.framework_version",
        ["9.9", "valid choices", "2.13", "2.14"],
    ),
    (
        {"resources": {"flavor": "huge-1-gpu"}},
        "resources.flavor",
        ["huge-1-gpu", "valid choices", "ai1-1-gpu", "ai1-1-cpu", "h100-1-gpu"],
    ),
    (
        {"resources": {"flavor": "ai1-1-cpu", "gpu": 1}},
        "resources.flavor",
        ["ai1-1-cpu", "ai1-1-gpu", "h100-1-gpu"],
    ),
    ({"region": "MARS"}, "region", ["MARS", "valid choices", "BHS", "GRA"]),
    ({"resources": {"cpu": 1, "gpu": 1}}, "resources", ["either gpu or cpu"]),
    ({"resources": {"gpu": -1}}, "resources.gpu", ["1"]),
    ({"resources": {"gpu": 0}}, "resources.gpu", ["1"]),
    ({"resources": {"gpu": 5}}, "resources.gpu", ["4"]),
    ({"resources": {"cpu": -2}}, "resources.cpu", ["1"]),
    ({"resources": {"cpu": 13}}, "resources.cpu", ["12"]),
    ({"labels": {"bad key!": "v"}}, "labels", ["bad key!", "letters, digits"]),
    ({"labels": {"team": "not valid!"}}, "labels", ["not valid!", "63"]),
    ({"labels": {"nbcloud/owner": "me"}}, "labels", ["nbcloud/", "reserved"]),
    ({"labels": "team=vision"}, "labels", ["dictionary"]),
    (
        {"volumes": ["just-a-string"]},
        "volumes.0",
        ["malformed", "container@alias[/prefix]:/mount/path", ".git[@branch]"],
    ),
    (
        {"volumes": ["bucket@store:/workspace/data:XX"]},
        "volumes.0",
        ["RO, RW or RWD"],
    ),
    ({"volumes": ["bucket@store:/etc:RO"]}, "volumes.0", ["system path"]),
    ({"name": "has spaces"}, "name", ["letters, digits"]),
    ({"env_vars": [{"name": "1BAD", "value": "x"}]}, "env_vars.0.name", ["shell variable name"]),
]


@pytest.mark.parametrize(("change", "path", "words"), INVALID)
def test_invalid_spec_is_400_naming_the_field_and_choices(alice_api, change, path, words):
    reply = alice_api.post(BASE, {**SPEC, **change}, format="json")
    body = assert_error(reply, 400, "invalid")
    assert list(body["fields"]) == [path], body
    for word in words:
        assert word in body["message"], (word, body)
        assert word in " ".join(body["fields"][path]), (word, body)
    assert body["message"].startswith(f"{path}: ")
    assert not Notebook.objects.exists()
    assert not NotebookEvent.objects.exists()


def test_missing_required_fields_are_named(alice_api):
    body = assert_error(alice_api.post(BASE, {}, format="json"), 400, "invalid")
    assert {"name", "env"} <= set(body["fields"])
    assert not Notebook.objects.exists()


# Listing and filters.


def test_list_filters_by_state_and_label_selector(alice_api):
    vision = create(alice_api, labels={"team": "vision", "env": "dev"})
    nlp = create(alice_api, labels={"team": "nlp"})
    bare = create(alice_api)
    assert alice_api.post(url(nlp, "stop/")).status_code == 202

    def ids(query: dict) -> set[str]:
        reply = alice_api.get(BASE, query)
        assert reply.status_code == 200, reply.content
        return {nb["id"] for nb in reply.json()["results"]}

    assert ids({}) == {vision["id"], nlp["id"], bare["id"]}
    assert ids({"state": "STOPPED"}) == {nlp["id"]}
    assert ids({"state": "QUEUED"}) == {vision["id"], bare["id"]}
    assert ids({"label_selector": "team=vision"}) == {vision["id"]}
    assert ids({"label_selector": "team!=vision"}) == {nlp["id"], bare["id"]}
    assert ids({"label_selector": "team=vision,env!=dev"}) == set()
    assert ids({"label_selector": "team!=nlp", "state": "QUEUED"}) == {vision["id"], bare["id"]}


@pytest.mark.parametrize("selector", ["team~vision", "team", "bad key!=x", "team=no good"])
def test_bad_label_selector_is_400(alice_api, selector):
    body = assert_error(alice_api.get(BASE, {"label_selector": selector}), 400, "invalid")
    assert "label_selector" in body["fields"]


def test_unknown_state_filter_is_400_with_choices(alice_api):
    body = assert_error(alice_api.get(BASE, {"state": "NAPPING"}), 400, "invalid")
    assert "state" in body["fields"]
    assert "QUEUED" in body["message"] and "STOPPED" in body["message"]


# Changes.


def test_patch_labels_works_in_any_state(alice_api):
    notebook = create(alice_api)
    reply = alice_api.patch(url(notebook), {"labels": {"team": "vision"}}, format="json")
    assert reply.status_code == 200, reply.content
    assert reply.json()["spec"]["labels"] == {"team": "vision"}
    alice_api.post(url(notebook, "stop/"))
    reply = alice_api.patch(url(notebook), {"labels": {"team": "nlp"}}, format="json")
    assert reply.status_code == 200, reply.content
    assert Notebook.objects.get(pk=notebook["id"]).labels == {"team": "nlp"}


def test_patch_env_vars_of_a_queued_notebook_is_409(alice_api):
    notebook = create(alice_api)
    reply = alice_api.patch(
        url(notebook), {"env_vars": [{"name": "A", "value": "1"}]}, format="json"
    )
    body = assert_error(reply, 409, "invalid_state")
    assert "QUEUED" in body["message"] and "env_vars" in body["message"]
    assert Notebook.objects.get(pk=notebook["id"]).env_vars == []


def test_patch_env_vars_of_a_stopped_notebook_works(alice_api):
    notebook = create(alice_api)
    alice_api.post(url(notebook, "stop/"))
    reply = alice_api.patch(
        url(notebook), {"env_vars": [{"name": "A", "value": "1"}]}, format="json"
    )
    assert reply.status_code == 200, reply.content
    assert reply.json()["spec"]["env_vars"] == [{"name": "A", "value": "1"}]


def test_patch_unknown_field_is_400(alice_api):
    notebook = create(alice_api)
    reply = alice_api.patch(url(notebook), {"name": "renamed"}, format="json")
    body = assert_error(reply, 400, "invalid")
    assert "name" in body["message"] and "labels" in body["message"]
    assert Notebook.objects.get(pk=notebook["id"]).name == "demo"


def test_patch_reserved_label_is_400(alice_api):
    notebook = create(alice_api)
    reply = alice_api.patch(url(notebook), {"labels": {"nbcloud/x": "y"}}, format="json")
    body = assert_error(reply, 400, "invalid")
    assert "labels" in body["fields"] and "reserved" in body["message"]


# Actions and events.


def test_stop_queued_then_stop_again_then_delete(alice_api):
    notebook = create(alice_api)
    reply = alice_api.post(url(notebook, "stop/"))
    assert reply.status_code == 202, reply.content
    assert reply.json()["status"]["state"] == "STOPPED"

    body = assert_error(alice_api.post(url(notebook, "stop/")), 409, "invalid_state")
    assert "STOPPED" in body["message"]

    reply = alice_api.delete(url(notebook))
    assert reply.status_code == 202, reply.content
    assert reply.json()["status"]["state"] == "DELETED"
    assert Notebook.objects.get(pk=notebook["id"]).state == "DELETED"
    assert_error(alice_api.get(url(notebook)), 404, "not_found")
    assert notebook["id"] not in {nb["id"] for nb in alice_api.get(BASE).json()["results"]}
    assert_error(alice_api.post(url(notebook, "start/")), 404, "not_found")


def test_start_a_stopped_notebook_queues_it(alice_api):
    notebook = create(alice_api)
    alice_api.post(url(notebook, "stop/"))
    reply = alice_api.post(url(notebook, "start/"))
    assert reply.status_code == 202, reply.content
    assert reply.json()["status"]["state"] == "QUEUED"
    body = assert_error(alice_api.post(url(notebook, "start/")), 409, "invalid_state")
    assert "QUEUED" in body["message"]


def test_events_list_the_transitions_with_the_token_as_actor(alice_api):
    notebook = create(alice_api)
    alice_api.post(url(notebook, "stop/"))
    alice_api.delete(url(notebook))
    # A deleted notebook is gone from the API: read its events before deleting.
    other = create(alice_api)
    alice_api.post(url(other, "stop/"))
    reply = alice_api.get(url(other, "events/"))
    assert reply.status_code == 200, reply.content
    events = reply.json()["results"]
    assert [(e["from_state"], e["to_state"]) for e in events] == [
        ("", "QUEUED"),
        ("QUEUED", "STOPPED"),
    ]
    assert all(e["actor"] == "alice (token alice-operator)" for e in events)
    assert events[1]["code"] == "USER_STOP"
    assert set(events[0]) == {"at", "actor", "from_state", "to_state", "code", "message"}
    deleted = NotebookEvent.objects.filter(notebook_id=notebook["id"]).order_by("at", "id")
    assert [e.to_state for e in deleted] == ["QUEUED", "STOPPED", "DELETING", "DELETED"]


def test_backups_list_is_empty_for_a_new_notebook(alice_api):
    notebook = create(alice_api)
    reply = alice_api.get(url(notebook, "backups/"))
    assert reply.status_code == 200, reply.content
    assert reply.json()["results"] == []


def test_editor_secret_never_leaves_the_platform(alice_api, bob_api):
    notebook = create(alice_api)
    secret = Notebook.objects.get(pk=notebook["id"]).editor_secret
    assert secret
    for api in (alice_api, bob_api):
        assert secret not in api.get(url(notebook)).content.decode()
        assert secret not in api.get(BASE).content.decode()
        assert api.get(url(notebook, "secret/")).status_code == 404


# Tenancy and roles.


def test_another_projects_token_gets_404_on_everything(alice_api, charlie_api):
    notebook = create(alice_api)
    for reply in (
        charlie_api.get(BASE),
        charlie_api.post(BASE, CPU_SPEC, format="json"),
        charlie_api.get(url(notebook)),
        charlie_api.patch(url(notebook), {"labels": {}}, format="json"),
        charlie_api.post(url(notebook, "stop/")),
        charlie_api.post(url(notebook, "start/")),
        charlie_api.delete(url(notebook)),
        charlie_api.get(url(notebook, "events/")),
        charlie_api.get(url(notebook, "backups/")),
        charlie_api.get("/api/v1/projects/alpha/quota/"),
    ):
        assert_error(reply, 404, "not_found")
    assert Notebook.objects.get(pk=notebook["id"]).state == "QUEUED"
    assert Notebook.objects.count() == 1
    # Charlie's own project answers, and shows nothing of alpha.
    reply = charlie_api.get("/api/v1/projects/bravo/notebooks/")
    assert reply.status_code == 200 and reply.json()["results"] == []
    # Nor can one reach alpha's notebook through bravo's URL.
    assert_error(
        charlie_api.get(f"/api/v1/projects/bravo/notebooks/{notebook['id']}/"), 404, "not_found"
    )


def test_unknown_project_is_404(alice_api):
    assert_error(alice_api.get("/api/v1/projects/nowhere/notebooks/"), 404, "not_found")


def test_read_token_may_read_but_not_write(alice_api, bob_api):
    notebook = create(alice_api)
    for path in (BASE, url(notebook), url(notebook, "events/"), "/api/v1/projects/alpha/quota/"):
        assert bob_api.get(path).status_code == 200, path
    for reply in (
        bob_api.post(BASE, CPU_SPEC, format="json"),
        bob_api.patch(url(notebook), {"labels": {"a": "b"}}, format="json"),
        bob_api.post(url(notebook, "start/")),
        bob_api.post(url(notebook, "stop/")),
        bob_api.delete(url(notebook)),
    ):
        body = assert_error(reply, 403, "forbidden")
        assert "read" in body["message"]
    stored = Notebook.objects.get()
    assert (stored.state, stored.labels) == ("QUEUED", {})


def test_no_token_is_401(alice):
    reply = APIClient().get(BASE)
    assert_error(reply, 401, "not_authenticated")
    assert reply["WWW-Authenticate"] == "Bearer"


def test_unknown_token_is_401(alice):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer nbc_not-a-real-token")
    body = assert_error(client.get(BASE), 401, "authentication_failed")
    assert "Unknown" in body["message"]


def test_expired_token_is_401_saying_expired(alice, alice_api):
    ApiToken.objects.filter(user=alice[0]).update(expires_at=timezone.now() - timedelta(minutes=1))
    body = assert_error(alice_api.get(BASE), 401, "authentication_failed")
    assert "expired" in body["message"]


def test_quota_endpoint_shows_use(alice_api):
    create(alice_api, SPEC)
    create(alice_api, CPU_SPEC)
    reply = alice_api.get("/api/v1/projects/alpha/quota/")
    assert reply.status_code == 200, reply.content
    body = reply.json()
    assert body["gpu"]["limit"] == 4 and body["gpu"]["used"] == 1
    assert body["cpu"]["used"] == 1 and body["notebooks"]["active"] == 2


def test_capabilities_list_the_catalogue(alice_api):
    for kind, expected in (
        ("frameworks", "pytorch"),
        ("editors", "jupyterlab"),
        ("flavors", "ai1-1-gpu"),
        ("regions", "GRA"),
    ):
        reply = alice_api.get(f"/api/v1/capabilities/{kind}/")
        assert reply.status_code == 200, reply.content
        assert expected in {item["id"] for item in reply.json()}


def test_start_a_deleting_notebook_is_409_naming_its_state(alice_api):
    notebook = create(alice_api)
    Notebook.objects.filter(pk=notebook["id"]).update(state="DELETING")
    body = assert_error(alice_api.post(url(notebook, "start/")), 409, "invalid_state")
    assert "DELETING" in body["message"]
    body = assert_error(alice_api.post(url(notebook, "stop/")), 409, "invalid_state")
    assert "DELETING" in body["message"]
    assert Notebook.objects.get(pk=notebook["id"]).state == "DELETING"


def test_stop_a_running_notebook_sends_the_stop_to_its_host(
    alice_api, django_capture_on_commit_callbacks
):
    from nbcloud.hosts.models import Host

    host = Host.objects.create(
        name="gra-7", region="GRA", cpus=8, memory_bytes=32 << 30, disk_bytes=100 << 30
    )
    notebook = create(alice_api)
    Notebook.objects.filter(pk=notebook["id"]).update(state="RUNNING", host=host)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        reply = alice_api.post(url(notebook, "stop/"))
    assert reply.status_code == 202, reply.content
    assert reply.json()["status"]["state"] == "STOPPING"
    assert len(callbacks) == 1  # the stop task, sent only once the change is committed


def test_logs_of_a_notebook_that_never_ran_are_empty(alice_api):
    notebook = create(alice_api)
    reply = alice_api.get(url(notebook, "logs/"))
    assert reply.status_code == 200, reply.content
    assert reply.json() == {"logs": "", "updated_at": None}
    body = assert_error(alice_api.get(url(notebook, "logs/"), {"tail": "many"}), 400, "invalid")
    assert "tail" in body["fields"]


def test_logs_are_the_copy_the_host_shipped(alice_api):
    """The API reads the log its host shipped: no runtime, no host at hand."""
    notebook = create(alice_api)
    row = Notebook.objects.get(pk=notebook["id"])
    services.save_editor_log(row, "\n".join(f"line {n}" for n in range(6000)))
    reply = alice_api.get(url(notebook, "logs/"), {"tail": "3"})
    assert reply.status_code == 200, reply.content
    assert reply.json()["logs"] == "line 5997\nline 5998\nline 5999"
    assert reply.json()["updated_at"]
    everything = alice_api.get(url(notebook, "logs/"), {"tail": "99999"}).json()["logs"]
    assert everything.splitlines()[0] == "line 1000"  # the last EditorLog.KEEP_LINES kept
    assert len(everything.splitlines()) == 5000


def test_session_users_see_only_their_projects(alice, charlie, alice_api):
    notebook = create(alice_api)
    member, outsider = APIClient(), APIClient()
    member.force_authenticate(alice[0])
    outsider.force_authenticate(charlie[0])
    assert member.get(url(notebook)).status_code == 200
    assert_error(outsider.get(url(notebook)), 404, "not_found")
    assert_error(outsider.get(BASE), 404, "not_found")


def test_other_errors_have_the_same_shape(alice_api):
    notebook = create(alice_api)
    assert_error(alice_api.put(url(notebook), CPU_SPEC, format="json"), 405, "method_not_allowed")
    assert_error(alice_api.get(f"{BASE}00000000-0000-0000-0000-000000000000/"), 404, "not_found")
    reply = alice_api.post(BASE, "{not json", content_type="application/json")
    assert "JSON" in assert_error(reply, 400, "parse_error")["message"]
    assert not Notebook.objects.exclude(pk=notebook["id"]).exists()
