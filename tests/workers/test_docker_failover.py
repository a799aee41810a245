"""A docker-runtime worker killed with SIGKILL in the middle of provisioning: the next
worker adopts the container the dead one made, by its name, and the notebook ends
RUNNING exactly once with no orphan container."""

from datetime import timedelta

import pytest
from django.utils import timezone

from nbcloud.notebooks import reconcile
from nbcloud.notebooks.models import Notebook, NotebookEvent
from support.services import kill_worker
from support.waiting import wait_for, wait_row_state

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SPEC = {
    "name": "contained",
    "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
    "resources": {"cpu": 1},
    "region": "BHS",  # only the docker host serves this region here
}


def _notebook(pk) -> Notebook:
    return Notebook.objects.get(pk=pk)


def test_start_cut_short_by_a_dead_worker_ends_running_once_in_one_container(
    platform_server,
    celery_worker_process,
    docker_host,
    docker_workers,
    docker_containers,
    alice_api,
    settings,
):
    first = docker_workers(NBCLOUD_EDITOR_READY_TIMEOUT="120")
    created = alice_api.post("/api/v1/projects/alpha/notebooks/", SPEC, format="json").json()
    # Killed as soon as its container exists: maybe before the state naming it is saved.
    (made,) = wait_for(
        lambda: docker_containers(created["id"]), interval=0.02, what="the container"
    )
    kill_worker(first)
    assert _notebook(created["id"]).state == "STARTING"

    docker_workers()
    reconcile.resend_stuck(timezone.now() + timedelta(seconds=settings.NBCLOUD_STUCK_AFTER + 1))
    running = wait_row_state(created["id"], "RUNNING", timeout=90)
    assert running.runtime_state["container_id"] == made.id
    assert [c.id for c in docker_containers(running.pk)] == [made.id]
    to_running = NotebookEvent.objects.filter(notebook=running, to_state="RUNNING")
    assert to_running.count() == 1

    alice_api.post(f"/api/v1/projects/alpha/notebooks/{running.pk}/stop/")
    wait_row_state(running.pk, "STOPPED")
    assert docker_containers(running.pk) == []
