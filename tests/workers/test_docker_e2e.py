"""End to end on the docker runtime: REST API -> a docker-runtime Celery worker ->
JupyterLab in a container -> a kernel through the gateway; logs through the API;
the workspace kept across stop and start; no container left after delete."""

import pytest

from support.editors import Kernel
from support.waiting import wait_row_state, wait_state

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SPEC = {
    "name": "boxed",
    "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
    "resources": {"cpu": 1},
    "region": "BHS",  # only the docker host serves this region here
}


def test_notebook_in_a_container_runs_code_and_keeps_its_workspace(
    platform_server,
    celery_worker_process,
    docker_host,
    docker_workers,
    docker_containers,
    alice_api,
    alice,
):
    docker_workers()
    created = alice_api.post("/api/v1/projects/alpha/notebooks/", SPEC, format="json")
    assert created.status_code == 201, created.content
    notebook_id = created.json()["id"]
    url = f"/api/v1/projects/alpha/notebooks/{notebook_id}/"
    status = wait_state(alice_api, url, "RUNNING")
    (container,) = docker_containers(notebook_id)
    assert container.labels["io.nbcloud.project"] == "alpha"

    kernel = Kernel(status["url"], {"Authorization": f"Bearer {alice[1]}"})
    assert kernel.execute("print(6 * 7)").strip() == "42"
    where = kernel.execute("import os, sys; print(os.getcwd(), os.getuid(), sys.prefix)")
    cwd, uid, prefix = where.split()
    assert (cwd, prefix) == ("/workspace", "/opt/env") and int(uid) != 0
    kernel.execute("open('/workspace/notes.txt', 'w').write('kept across restarts')")
    kernel.close()

    logs = alice_api.get(url + "logs/?tail=500")
    assert logs.status_code == 200 and "Jupyter Server" in logs.json()["logs"]

    assert alice_api.post(url + "stop/").status_code == 202
    wait_state(alice_api, url, "STOPPED")
    assert docker_containers(notebook_id) == []
    # The stopped container's output outlives it.
    assert "Jupyter Server" in alice_api.get(url + "logs/").json()["logs"]

    assert alice_api.post(url + "start/").status_code == 202
    restarted = wait_state(alice_api, url, "RUNNING")
    (again,) = docker_containers(notebook_id)
    assert again.id != container.id
    kernel = Kernel(restarted["url"], {"Authorization": f"Bearer {alice[1]}"})
    assert kernel.execute("print(open('/workspace/notes.txt').read())").strip() == (
        "kept across restarts"
    )
    kernel.close()

    assert alice_api.delete(url).status_code == 202
    wait_row_state(notebook_id, "DELETED")
    assert docker_containers(notebook_id) == []
