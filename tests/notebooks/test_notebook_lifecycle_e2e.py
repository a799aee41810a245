"""End to end: REST API -> real Celery worker -> sandboxed JupyterLab -> back.

Nothing is mocked: the worker is a `celery worker` process on the real broker
and database, the editor a real JupyterLab under bubblewrap, the backup a
real archive in the backups storage.
"""

import os
import signal

import psutil
import pytest

from nbcloud.notebooks.models import Notebook
from support.editors import Kernel, notebook_url
from support.waiting import api_status, wait_for, wait_row_state, wait_state

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SPEC = {
    "name": "demo",
    "labels": {"team": "vision"},
    "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
    "resources": {"cpu": 1},
}

# A tiny wheel, made in the sandbox's private /tmp and installed with a plain
# `pip install`, which PIP_USER=1 sends to /workspace/.local.
MAKE_AND_INSTALL_WHEEL = r"""
import subprocess, sys, zipfile
path = "/tmp/nbc_hello-1.0-py3-none-any.whl"
with zipfile.ZipFile(path, "w") as whl:
    whl.writestr("nbc_hello.py", "GREETING = 'hello from the workspace'\n")
    whl.writestr("nbc_hello-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: nbc-hello\nVersion: 1.0\n")
    whl.writestr("nbc_hello-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    whl.writestr("nbc_hello-1.0.dist-info/RECORD", "")
done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", path], capture_output=True, text=True)
print(done.returncode, done.stderr[-500:])
"""


@pytest.fixture
def running_notebook(platform_server, celery_worker_process, conda_env, this_host, alice_api):
    created = alice_api.post("/api/v1/projects/alpha/notebooks/", SPEC, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["status"]["state"] == "QUEUED"
    url = f"/api/v1/projects/alpha/notebooks/{body['id']}/"
    status = wait_state(alice_api, url, "RUNNING")
    yield body["id"], url, status
    # Whatever the test did, leave no editor behind.
    from workers.lifecycle import runtime_for

    notebook = Notebook.objects.filter(pk=body["id"]).first()
    if notebook is not None and notebook.runtime_state:
        runtime_for(notebook).stop(5)


def _kernel(api, url, token: str) -> Kernel:
    """A kernel reached through the gateway, with the platform token (never the editor's)."""
    return Kernel(api_status(api, url)["url"], {"Authorization": f"Bearer {token}"})


def test_notebook_runs_code_and_keeps_workspace_across_stop_and_start(
    running_notebook, alice_api, alice, platform_server
):
    notebook_id, url, status = running_notebook
    assert status["url"] == notebook_url(platform_server, notebook_id)
    kernel = _kernel(alice_api, url, alice[1])
    assert kernel.execute("print(6 * 7)").strip() == "42"
    assert kernel.execute("import os; print(os.getcwd(), os.getuid() != 0)").split() == [
        "/workspace",
        "True",
    ]
    kernel.execute("open('/workspace/notes.txt', 'w').write('kept across restarts')")
    installed = kernel.execute(MAKE_AND_INSTALL_WHEEL)
    assert installed.startswith("0"), installed
    kernel.close()

    assert alice_api.post(url + "stop/").status_code == 202
    stopped = wait_state(alice_api, url, "STOPPED")
    assert stopped["workspace_size"] > 0
    backups = alice_api.get(url + "backups/").json()["results"]
    assert len(backups) == 1 and len(backups[0]["sha256"]) == 64
    # Stopping released the host: the local copy is gone, only the backup holds it.
    assert not (this_host_workspace := Notebook.objects.get(pk=notebook_id)).host_id
    del this_host_workspace

    assert alice_api.post(url + "start/").status_code == 202
    restarted = wait_state(alice_api, url, "RUNNING")
    kernel = _kernel(alice_api, url, alice[1])
    assert (
        kernel.execute("print(open('/workspace/notes.txt').read())").strip()
        == "kept across restarts"
    )
    out = kernel.execute("import nbc_hello; print(nbc_hello.GREETING); print(nbc_hello.__file__)")
    greeting, location = out.strip().splitlines()
    assert greeting == "hello from the workspace"
    assert location.startswith("/workspace/.local/")
    kernel.close()
    assert restarted["last_started_at"] > status["last_started_at"]

    assert alice_api.delete(url).status_code == 202
    wait_row_state(notebook_id, "DELETED")
    assert alice_api.get(url).status_code == 404
    events = [(e.from_state, e.to_state) for e in Notebook.objects.get(pk=notebook_id).events.all()]
    assert events == [
        ("", "QUEUED"),
        ("QUEUED", "STARTING"),
        ("STARTING", "RUNNING"),
        ("RUNNING", "STOPPING"),
        ("STOPPING", "STOPPED"),
        ("STOPPED", "QUEUED"),
        ("QUEUED", "STARTING"),
        ("STARTING", "RUNNING"),
        ("RUNNING", "DELETING"),
        ("DELETING", "DELETED"),
    ]


def test_dead_editor_is_noticed_saved_and_failed(running_notebook, alice_api, alice):
    notebook_id, url, _ = running_notebook
    kernel = _kernel(alice_api, url, alice[1])
    kernel.execute("open('/workspace/work.txt', 'w').write('unsaved work')")
    kernel.close()
    pid = Notebook.objects.get(pk=notebook_id).runtime_state["pid"]
    os.killpg(pid, signal.SIGKILL)
    wait_for(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
        what="the editor to die",
    )

    # The host's worker checks its editors at each heartbeat (NBCLOUD_HEARTBEAT_INTERVAL).
    failed = wait_state(alice_api, url, "FAILED")
    assert failed["info"]["code"] == "EDITOR_DIED"
    assert "stopped unexpectedly" in failed["info"]["message"]
    assert len(alice_api.get(url + "backups/").json()["results"]) == 1  # the work was saved

    assert alice_api.post(url + "start/").status_code == 202
    wait_state(alice_api, url, "RUNNING")
    kernel = _kernel(alice_api, url, alice[1])
    assert kernel.execute("print(open('/workspace/work.txt').read())").strip() == "unsaved work"
    kernel.close()
    alice_api.post(url + "stop/")
    wait_state(alice_api, url, "STOPPED")
