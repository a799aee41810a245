"""The admin: changelists, the notebook page with its events, actions, and no secrets."""

import pytest
from django.utils import timezone

from nbcloud.hosts.models import Host
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import State

pytestmark = pytest.mark.django_db

SPEC = {
    "name": "demo",
    "labels": {"team": "vision"},
    "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
    "resources": {"cpu": 1},
}


@pytest.fixture
def notebook(alice_api) -> Notebook:
    reply = alice_api.post("/api/v1/projects/alpha/notebooks/", SPEC, format="json")
    assert reply.status_code == 201, reply.content
    return Notebook.objects.get(pk=reply.json()["id"])


@pytest.fixture
def host(db) -> Host:
    return Host.objects.create(
        name="gpu-1",
        region="GRA",
        cpus=32,
        memory_bytes=128 * 1024**3,
        disk_bytes=1024**4,
        gpus=[{"index": 0, "uuid": "GPU-abc", "model": "Tesla V100S", "memory_bytes": 32 << 30}],
        last_heartbeat_at=timezone.now(),
    )


@pytest.mark.parametrize(
    "path",
    [
        "/admin/",
        "/admin/notebooks/notebook/",
        "/admin/projects/project/",
        "/admin/projects/apitoken/",
        "/admin/hosts/host/",
    ],
)
def test_changelists_answer(admin_client, notebook, host, path):
    reply = admin_client.get(path)
    assert reply.status_code == 200, path


def test_changelists_show_their_rows(admin_client, notebook, host):
    assert "demo" in admin_client.get("/admin/notebooks/notebook/").content.decode()
    assert "gpu-1" in admin_client.get("/admin/hosts/host/").content.decode()
    assert "alpha" in admin_client.get("/admin/projects/project/").content.decode()
    assert "alice-operator" in admin_client.get("/admin/projects/apitoken/").content.decode()


def test_notebook_page_shows_its_events(admin_client, notebook, alice_api):
    alice_api.post(f"/api/v1/projects/alpha/notebooks/{notebook.pk}/stop/")
    reply = admin_client.get(f"/admin/notebooks/notebook/{notebook.pk}/change/")
    assert reply.status_code == 200
    html = reply.content.decode()
    assert "Notebook events" in html
    assert "alice (token alice-operator)" in html
    assert "Created." in html and "Stopped before it started." in html


def test_stop_action_stops_a_queued_notebook(admin_client, notebook, admin_user):
    reply = admin_client.post(
        "/admin/notebooks/notebook/",
        {"action": "stop_notebooks", "_selected_action": [str(notebook.pk)]},
        follow=True,
    )
    assert reply.status_code == 200
    notebook.refresh_from_db()
    assert notebook.state == State.STOPPED
    event = notebook.events.get(to_state=State.STOPPED)
    assert event.actor == f"{admin_user.username} (admin)"


def test_an_illegal_action_is_reported_not_applied(admin_client, notebook):
    reply = admin_client.post(
        "/admin/notebooks/notebook/",
        {"action": "start_notebooks", "_selected_action": [str(notebook.pk)]},
        follow=True,
    )
    assert reply.status_code == 200
    assert "QUEUED" in reply.content.decode()
    notebook.refresh_from_db()
    assert notebook.state == State.QUEUED


def test_tokens_cannot_be_added_in_the_admin(admin_client, alice):
    assert admin_client.get("/admin/projects/apitoken/add/").status_code == 403
    token = alice[1]
    page = admin_client.get(f"/admin/projects/apitoken/{alice[0].api_tokens.get().pk}/change/")
    assert page.status_code == 200
    assert token not in page.content.decode()


def test_notebooks_cannot_be_added_or_deleted_in_the_admin(admin_client, notebook):
    assert admin_client.get("/admin/notebooks/notebook/add/").status_code == 403
    delete = admin_client.get(f"/admin/notebooks/notebook/{notebook.pk}/delete/")
    assert delete.status_code == 403


def test_the_editor_secret_never_appears(admin_client, notebook):
    assert notebook.editor_secret
    for path in (
        "/admin/notebooks/notebook/",
        f"/admin/notebooks/notebook/{notebook.pk}/change/",
        f"/admin/notebooks/notebook/?q={notebook.name}",
    ):
        reply = admin_client.get(path)
        assert reply.status_code == 200
        assert notebook.editor_secret not in reply.content.decode(), path


def test_labels_can_be_edited_in_the_admin(admin_client, notebook):
    reply = admin_client.post(
        f"/admin/notebooks/notebook/{notebook.pk}/change/",
        {
            "labels": '{"team": "nlp"}',
            "events-TOTAL_FORMS": "1",
            "events-INITIAL_FORMS": "1",
            "events-0-id": str(notebook.events.get().pk),
            "events-0-notebook": str(notebook.pk),
            "backups-TOTAL_FORMS": "0",
            "backups-INITIAL_FORMS": "0",
            "grants-TOTAL_FORMS": "0",
            "grants-INITIAL_FORMS": "0",
        },
    )
    assert reply.status_code == 302, reply.content.decode()[-3000:]
    notebook.refresh_from_db()
    assert notebook.labels == {"team": "nlp"}
    assert notebook.state == State.QUEUED
