"""A host's worker killed with SIGKILL: running editors survive it, and a
new worker takes over, also a start the dead one left half done; a start
task lost between commit and dispatch is sent again by reconcile; and the
settings that make redelivery safe hold."""

import time
from datetime import timedelta

import psutil
import pytest
import requests
from django.conf import settings
from django.utils import timezone

from nbcloud import dispatch
from nbcloud.celery import app
from nbcloud.notebooks import reconcile
from nbcloud.notebooks import services as notebook_services
from nbcloud.notebooks.models import Notebook, NotebookEvent
from support.factories import make_notebook
from support.services import kill_worker
from support.waiting import wait_for, wait_row_state

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SPEC = {
    "name": "survivor",
    "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
    "resources": {"cpu": 1},
    "region": "BHS",  # only the failover host serves this region here
}


def _notebook(pk) -> Notebook:
    return Notebook.objects.get(pk=pk)


def test_running_editor_survives_its_worker_and_a_new_one_stops_it(
    platform_server, celery_worker_process, conda_env, failover_host, workers, alice_api, alice
):
    first = workers()
    created = alice_api.post("/api/v1/projects/alpha/notebooks/", SPEC, format="json").json()
    notebook = wait_row_state(created["id"], "RUNNING")
    assert notebook.host == failover_host
    editor_pid = notebook.runtime_state["pid"]
    kill_worker(first)

    auth = {"Authorization": f"Bearer {alice[1]}"}
    assert requests.get(f"{notebook.url}api/status", headers=auth, timeout=10).status_code == 200
    assert psutil.pid_exists(editor_pid)

    workers()
    assert (
        alice_api.post(f"/api/v1/projects/alpha/notebooks/{notebook.pk}/stop/").status_code == 202
    )
    wait_row_state(notebook.pk, "STOPPED")
    gone = not psutil.pid_exists(editor_pid) or psutil.Process(editor_pid).status() == "zombie"
    assert gone
    assert _notebook(notebook.pk).backups.count() == 1


def test_start_cut_short_by_a_dead_worker_is_finished_by_the_next(
    platform_server, celery_worker_process, conda_env, failover_host, workers, alice_api, settings
):
    # The first worker dies just after launching the editor, before it answers.
    first = workers(NBCLOUD_EDITOR_READY_TIMEOUT="120")
    created = alice_api.post("/api/v1/projects/alpha/notebooks/", SPEC, format="json").json()
    wait_for(
        lambda: _notebook(created["id"]).runtime_state.get("pid"),
        interval=0.02,
        what="the editor to be launched",
    )
    kill_worker(first)
    launched = _notebook(created["id"])
    assert launched.state == "STARTING"

    # The next worker of the host takes the start up as it starts: no waiting for
    # reconcile to find it stuck (NBCLOUD_STUCK_AFTER, ten minutes by default).
    assert settings.NBCLOUD_STUCK_AFTER >= 600
    began = time.monotonic()
    workers()
    running = wait_row_state(created["id"], "RUNNING", timeout=90)
    print(f"recovered {time.monotonic() - began:.1f} s after the new worker was started")
    # The new worker adopted the editor the dead one launched: no second editor.
    assert running.runtime_state["pid"] == launched.runtime_state["pid"]
    editors = [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(running.pk) in " ".join(p.info["cmdline"] or [])
        and "bwrap" in (p.info["cmdline"] or [""])[0]
    ]
    assert (
        len({p.pid for p in editors if p.ppid() == 1 or p.pid == running.runtime_state["pid"]}) <= 1
    )
    alice_api.post(f"/api/v1/projects/alpha/notebooks/{running.pk}/stop/")
    wait_row_state(running.pk, "STOPPED")


def _editors(notebook_id) -> set[int]:
    """The outermost sandboxes (bwrap, which forks itself) running this notebook's editor."""
    sandboxes = {
        p.pid: p.ppid()
        for p in psutil.process_iter(["cmdline"])
        if str(notebook_id) in " ".join(p.info["cmdline"] or [])
        and "bwrap" in (p.info["cmdline"] or [""])[0]
        and p.status() != "zombie"
    }
    return {pid for pid, parent in sandboxes.items() if parent not in sandboxes}


def test_two_workers_on_one_host_queue_start_the_editor_once(
    platform_server, celery_worker_process, conda_env, failover_host, workers, alice_api, settings
):
    both = [workers(), workers()]  # two consumers of queue host.failover
    created = alice_api.post("/api/v1/projects/alpha/notebooks/", SPEC, format="json").json()
    wait_for(lambda: _notebook(created["id"]).state != "QUEUED", what="the placement")
    # The start sent twice more at once (a reconcile resend, a worker's resume): with
    # two workers and two slots each, they run beside the first.
    for _ in range(2):
        dispatch.start(created["id"], failover_host.name)
    running = wait_row_state(created["id"], "RUNNING", timeout=90)
    logs = [settings.DATA_DIR / f"{failover_host.name}-{i}.log" for i in range(len(both))]
    wait_for(
        lambda: sum(log.read_text().count("notebooks.start[") for log in logs) >= 6,
        what="the three start tasks received and done by the two workers",
    )
    assert len(_editors(running.pk)) == 1, _editors(running.pk)
    assert _notebook(running.pk).runtime_state == running.runtime_state  # not started again
    assert NotebookEvent.objects.filter(notebook=running, to_state="RUNNING").count() == 1
    alice_api.post(f"/api/v1/projects/alpha/notebooks/{running.pk}/stop/")
    wait_row_state(running.pk, "STOPPED")


def test_redelivery_settings_make_a_killed_task_run_again_and_never_twice_at_once():
    conf = app.conf
    # Acknowledged when done, not when received: a task whose worker dies
    # (SIGKILL, OOM) goes back to the queue for another worker.
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    # The broker redelivers an unacknowledged task after the visibility
    # timeout: longer than any task may run, so none runs twice at once.
    assert conf.task_time_limit and conf.task_time_limit >= settings.NBCLOUD_EDITOR_READY_TIMEOUT
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit


def test_a_start_lost_between_commit_and_dispatch_is_sent_again(
    conda_env, failover_host, workers, alpha, settings
):
    workers()
    # Placed and committed, but its start task never reached the broker.
    notebook = make_notebook(
        alpha,
        region="BHS",
        state="STARTING",
        host=failover_host,
        editor_secret="s" * 48,
        state_changed_at=timezone.now() - timedelta(seconds=5),
    )
    time.sleep(2)
    assert _notebook(notebook.pk).state == "STARTING"  # nothing happens by itself

    reconcile.resend_stuck(timezone.now() + timedelta(seconds=settings.NBCLOUD_STUCK_AFTER + 1))
    wait_row_state(notebook.pk, "RUNNING", timeout=90)
    assert NotebookEvent.objects.filter(notebook=notebook, to_state="RUNNING").count() == 1
    notebook_services.stop(_notebook(notebook.pk), actor="test")
    wait_row_state(notebook.pk, "STOPPED")
