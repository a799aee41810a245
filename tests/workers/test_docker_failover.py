"""A docker-runtime worker killed with SIGKILL in the middle of provisioning: the next
worker adopts the container the dead one made, by its name, and the notebook ends
RUNNING exactly once with no orphan container."""

from datetime import timedelta

import pytest
from conftest import _stop_service, kill_worker, start_worker, wait_for
from django.conf import settings
from django.utils import timezone

from nbcloud.hosts import services as host_services
from nbcloud.hosts.inventory import read_inventory
from nbcloud.notebooks import reconcile
from nbcloud.notebooks.models import Notebook, NotebookEvent

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

HOST = "failover-docker"
SPEC = {
    "name": "contained",
    "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
    "resources": {"cpu": 1},
    "region": "BHS",  # only the docker host serves this region here
}


@pytest.fixture
def docker_host(transactional_db, docker_image):
    return host_services.register(
        HOST, "BHS", read_inventory(settings.NBCLOUD_WORKSPACES_DIR), "docker"
    )


@pytest.fixture
def docker_workers(broker_url, public_url):
    started = []

    def start(**env):
        proc = start_worker(
            broker_url,
            HOST,
            public_url,
            name=f"docker{len(started)}",
            env={"NBCLOUD_HOST_REGION": "BHS", "NBCLOUD_RUNTIME": "docker", **env},
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            _stop_service(proc)


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
    wait_for(lambda: _notebook(created["id"]).state == "RUNNING", what="RUNNING", timeout=90)
    running = _notebook(created["id"])
    assert running.runtime_state["container_id"] == made.id
    assert [c.id for c in docker_containers(running.pk)] == [made.id]
    to_running = NotebookEvent.objects.filter(notebook=running, to_state="RUNNING")
    assert to_running.count() == 1

    alice_api.post(f"/api/v1/projects/alpha/notebooks/{running.pk}/stop/")
    wait_for(lambda: _notebook(running.pk).state == "STOPPED", what="STOPPED")
    assert docker_containers(running.pk) == []
