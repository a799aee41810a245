"""The project GPU quota: instant refusal, what counts, and atomicity under concurrency."""

import threading

import pytest
from django.db import connection
from rest_framework.test import APIClient

from nbcloud import dispatch
from nbcloud.notebooks.models import Notebook, NotebookEvent

BASE = "/api/v1/projects/alpha/notebooks/"


def gpu_spec(name: str = "gpu", gpus: int = 1) -> dict:
    return {
        "name": name,
        "env": {"framework_id": "pytorch", "editor_id": "jupyterlab"},
        "resources": {"gpu": gpus},
    }


def create(api, **kwargs):
    return api.post(BASE, gpu_spec(**kwargs), format="json")


def assert_quota_exceeded(reply, limit: int) -> dict:
    assert reply.status_code == 403, reply.content
    body = reply.json()
    assert set(body) == {"code", "message"}, body
    assert body["code"] == "quota_exceeded"
    assert f"{limit} GPUs" in body["message"], body
    return body


@pytest.mark.django_db
def test_over_quota_is_refused_at_once_and_creates_nothing(alice_api):
    assert create(alice_api, name="a", gpus=3).status_code == 201
    events = NotebookEvent.objects.count()
    body = assert_quota_exceeded(create(alice_api, name="b", gpus=2), 4)
    assert "alpha" in body["message"]
    assert list(Notebook.objects.values_list("name", flat=True)) == ["a"]
    assert NotebookEvent.objects.count() == events
    # What still fits is accepted.
    assert create(alice_api, name="c", gpus=1).status_code == 201


@pytest.mark.django_db
def test_queued_notebooks_count_against_the_quota(alice_api):
    for index in range(4):
        reply = create(alice_api, name=f"nb{index}")
        assert reply.status_code == 201, reply.content
        assert reply.json()["status"]["state"] == "QUEUED"
    assert_quota_exceeded(create(alice_api, name="nb4"), 4)
    assert Notebook.objects.count() == 4
    quota = alice_api.get("/api/v1/projects/alpha/quota/").json()
    assert quota["gpu"] == {"limit": 4, "used": 4, "max_per_notebook": 4}


@pytest.mark.django_db
def test_cpu_notebooks_do_not_use_the_gpu_quota(alice_api):
    assert create(alice_api, name="big", gpus=4).status_code == 201
    reply = alice_api.post(
        BASE,
        {**gpu_spec("cpu"), "resources": {"cpu": 12}},
        format="json",
    )
    assert reply.status_code == 201, reply.content


@pytest.mark.django_db
def test_stopped_notebook_frees_its_gpus_and_its_start_is_refused_when_taken(alice_api):
    first = create(alice_api, name="first", gpus=4).json()
    assert alice_api.post(f"{BASE}{first['id']}/stop/").status_code == 202
    second = create(alice_api, name="second", gpus=4)
    assert second.status_code == 201, second.content

    events = NotebookEvent.objects.filter(notebook_id=first["id"]).count()
    assert_quota_exceeded(alice_api.post(f"{BASE}{first['id']}/start/"), 4)
    assert Notebook.objects.get(pk=first["id"]).state == "STOPPED"
    assert NotebookEvent.objects.filter(notebook_id=first["id"]).count() == events

    # Once the other one stops, it may start again.
    assert alice_api.post(f"{BASE}{second.json()['id']}/stop/").status_code == 202
    reply = alice_api.post(f"{BASE}{first['id']}/start/")
    assert reply.status_code == 202, reply.content
    assert reply.json()["status"]["state"] == "QUEUED"


@pytest.mark.django_db
def test_an_admin_raised_quota_allows_more(alice_api, alpha):
    assert create(alice_api, name="a", gpus=4).status_code == 201
    assert_quota_exceeded(create(alice_api, name="b", gpus=4), 4)
    alpha.gpu_quota = 8
    alpha.save()
    assert create(alice_api, name="b", gpus=4).status_code == 201
    assert_quota_exceeded(create(alice_api, name="c"), 8)
    assert alice_api.get("/api/v1/projects/alpha/quota/").json()["gpu"]["limit"] == 8


@pytest.mark.django_db
def test_quota_is_per_project(alice_api, charlie_api):
    assert create(alice_api, name="a", gpus=4).status_code == 201
    reply = charlie_api.post("/api/v1/projects/bravo/notebooks/", gpu_spec("b", 4), format="json")
    assert reply.status_code == 201, reply.content


@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_never_exceed_the_quota(alice, monkeypatch):
    """20 requests at once, each for 1 GPU, against a quota of 4: exactly 4 win."""
    # This test commits for real: keep the on-commit `schedule` task off the broker.
    sent = []
    monkeypatch.setattr(dispatch, "schedule", lambda: sent.append(1))
    token = alice[1]
    barrier = threading.Barrier(20)
    statuses: list[int] = []
    codes: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        try:
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
            barrier.wait(timeout=30)
            reply = client.post(BASE, gpu_spec(f"nb{index}"), format="json")
            with lock:
                statuses.append(reply.status_code)
                if reply.status_code != 201:
                    codes.append(reply.json().get("code"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            with lock:
                errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert sorted(statuses).count(201) == 4, statuses
    assert sorted(statuses).count(403) == 16, statuses
    assert set(codes) == {"quota_exceeded"}
    assert Notebook.objects.filter(project__name="alpha").count() == 4
    assert sum(Notebook.objects.values_list("gpu", flat=True)) == 4
    assert NotebookEvent.objects.count() == 4
    assert len(sent) == 4
