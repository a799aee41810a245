"""End to end on the slurm runtime: REST API -> the control worker -> the worker of a
host that is a real (one-node) Slurm cluster -> a Slurm job running the sandboxed
JupyterLab -> code through the gateway. Slurm places and queues; nbcloud shows it."""

import psutil
import pytest
from django.core.files.base import ContentFile

from nbcloud.billing.models import BillableInterval
from nbcloud.billing.services import minutes_commenced
from nbcloud.notebooks.models import Backup, Notebook
from support.editors import Kernel
from support.services import kill_worker
from support.waiting import api_status, wait_for, wait_state
from workers.runtimes.base import log_file
from workers.runtimes.slurm import accounted_job, show_job
from workers.workspace import backup_storage, local_path

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SPEC = {
    "name": "on-slurm",
    "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
    "resources": {"cpu": 1},
    "region": "BHS",  # only the slurm host serves this region here
}


def _kernel(api, url, token: str) -> Kernel:
    return Kernel(api_status(api, url)["url"], {"Authorization": f"Bearer {token}"})


def _checked_state(api, url: str, state: str):
    """What the cluster's worker finds checking its notebooks at each heartbeat."""

    def reached():
        status = api_status(api, url)
        return status if status["state"] == state else None

    return wait_for(reached, timeout=120, interval=1, what=f"{url} to be {state}")


def test_queued_in_slurm_runs_when_the_node_frees_survives_its_worker_and_bills_slurm_times(
    platform_server, celery_worker_process, conda_env, slurm_workers, slurm_idle, alice_api, alice
):
    first = slurm_workers()
    # Another user's job holds every CPU of the node.
    blocker = slurm_idle.submit(f"--cpus-per-task={slurm_idle.cpus}")
    wait_for(lambda: slurm_idle.job_state(blocker) == "RUNNING", what="the blocking job")

    created = alice_api.post("/api/v1/projects/alpha/notebooks/", SPEC, format="json").json()
    url = f"/api/v1/projects/alpha/notebooks/{created['id']}/"
    queued = wait_for(
        lambda: (
            (s := api_status(alice_api, url))["state"] == "QUEUED"
            and "Slurm" in s["info"]["message"]
            and s
        ),
        timeout=60,
        what="the notebook to wait in Slurm",
    )
    assert queued["info"]["code"] == "WAITING_FOR_CAPACITY"
    assert "Resources" in queued["info"]["message"], queued["info"]
    assert "position 1" in queued["info"]["message"]
    job_id = Notebook.objects.get(pk=created["id"]).runtime_state["job_id"]
    assert slurm_idle.job_state(job_id) == "PENDING"
    assert not BillableInterval.objects.filter(notebook_id=created["id"]).exists()

    slurm_idle.run("scancel", blocker)
    running = _checked_state(alice_api, url, "RUNNING")
    kernel = _kernel(alice_api, url, alice[1])
    assert kernel.execute("print(6 * 7)").strip() == "42"
    kernel.execute("open('/workspace/notes.txt', 'w').write('kept')")
    kernel.close()

    # The worker dies; the job and its editor do not, and the next worker adopts them.
    kill_worker(first)
    slurm_workers()
    kernel = _kernel(alice_api, url, alice[1])
    assert kernel.execute("print(open('/workspace/notes.txt').read())").strip() == "kept"
    kernel.close()
    notebook = Notebook.objects.get(pk=created["id"])
    assert notebook.runtime_state["job_id"] == job_id
    assert api_status(alice_api, url)["last_started_at"] == running["last_started_at"]

    assert alice_api.post(url + "stop/").status_code == 202
    stopped = wait_state(alice_api, url, "STOPPED")
    assert stopped["workspace_size"] > 0
    assert len(alice_api.get(url + "backups/").json()["results"]) == 1

    # Billed for what Slurm says ran: from the job's start to its end, as accounting
    # (slurmdbd, sacct) recorded it where the cluster keeps accounting.
    job = accounted_job(job_id) if slurm_idle.accounting_db else show_job(job_id)
    assert job is not None and job.end is not None
    interval = BillableInterval.objects.get(notebook_id=created["id"])
    assert (interval.started_at, interval.ended_at) == (job.start, job.end)
    assert interval.records.count() == minutes_commenced(job.start, job.end)

    # Started again: its workspace is back, in a new job.
    assert alice_api.post(url + "start/").status_code == 202
    wait_state(alice_api, url, "RUNNING")
    assert Notebook.objects.get(pk=created["id"]).runtime_state["job_id"] != job_id
    kernel = _kernel(alice_api, url, alice[1])
    assert kernel.execute("print(open('/workspace/notes.txt').read())").strip() == "kept"
    kernel.close()
    alice_api.post(url + "stop/")
    wait_state(alice_api, url, "STOPPED")


def test_an_administrators_scancel_ends_the_notebook_failed_with_slurms_reason(
    platform_server, celery_worker_process, conda_env, slurm_workers, slurm_idle, alice_api, alice
):
    slurm_workers()
    created = alice_api.post("/api/v1/projects/alpha/notebooks/", SPEC, format="json").json()
    url = f"/api/v1/projects/alpha/notebooks/{created['id']}/"
    wait_state(alice_api, url, "RUNNING")
    kernel = _kernel(alice_api, url, alice[1])
    kernel.execute("open('/workspace/work.txt', 'w').write('unsaved work')")
    kernel.close()

    job_id = Notebook.objects.get(pk=created["id"]).runtime_state["job_id"]
    slurm_idle.run("scancel", job_id)
    failed = _checked_state(alice_api, url, "FAILED")
    assert failed["info"]["code"] == "EDITOR_DIED"
    assert f"Slurm job {job_id} ended" in failed["info"]["message"]
    # Accounting says who: root (uid 0) here.
    cancelled = "CANCELLED by 0" if slurm_idle.accounting_db else "CANCELLED"
    assert cancelled in failed["info"]["message"]
    # Its work was saved where the job left it.
    assert len(alice_api.get(url + "backups/").json()["results"]) == 1


def test_a_notebook_stopped_while_queued_in_slurm_leaves_no_job(
    platform_server, celery_worker_process, conda_env, slurm_workers, slurm_idle, alice_api
):
    slurm_workers()
    blocker = slurm_idle.submit(f"--cpus-per-task={slurm_idle.cpus}")
    # Running before the notebook asks (else both wait, and which Slurm runs first is
    # its business, not this test's).
    wait_for(lambda: slurm_idle.job_state(blocker) == "RUNNING", what="the blocking job")
    created = alice_api.post("/api/v1/projects/alpha/notebooks/", SPEC, format="json").json()
    url = f"/api/v1/projects/alpha/notebooks/{created['id']}/"
    wait_for(
        lambda: (
            Notebook.objects.get(pk=created["id"]).runtime_state.get("job_id")
            and api_status(alice_api, url)["state"] == "QUEUED"
        ),
        what="the notebook to wait in Slurm",
    )
    job_id = Notebook.objects.get(pk=created["id"]).runtime_state["job_id"]
    assert alice_api.post(url + "stop/").status_code == 202
    assert api_status(alice_api, url)["state"] == "STOPPED"
    # The host's sweep cancels the job of a run it no longer holds.
    wait_for(
        lambda: slurm_idle.job_state(job_id) == "CANCELLED", timeout=30, what="the job cancelled"
    )
    assert slurm_idle.job_state(blocker) == "RUNNING"
    assert not BillableInterval.objects.filter(notebook_id=created["id"]).exists()


def test_the_job_restores_and_saves_the_workspace_and_a_killed_job_leaves_it_to_the_worker(
    platform_server, celery_worker_process, conda_env, slurm_workers, slurm_idle, alice_api, alice
):
    slurm_workers()
    created = alice_api.post("/api/v1/projects/alpha/notebooks/", SPEC, format="json").json()
    url = f"/api/v1/projects/alpha/notebooks/{created['id']}/"
    editor_log = log_file(created["id"])
    wait_state(alice_api, url, "RUNNING")
    kernel = _kernel(alice_api, url, alice[1])
    kernel.execute("open('/workspace/work.txt', 'w').write('first')")
    kernel.close()

    # The job's launcher killed outright (the OOM killer, a node failing): it cannot
    # save, and the worker saves the shared copy instead.
    (launcher,) = (
        proc
        for proc in psutil.process_iter(["cmdline"])
        if f"{created['id']}.launch.json" in " ".join(proc.info["cmdline"] or ())
    )
    launcher.kill()
    assert _checked_state(alice_api, url, "FAILED")["info"]["code"] == "EDITOR_DIED"
    (by_worker,) = alice_api.get(url + "backups/").json()["results"]
    assert "workspace saved" not in editor_log.read_text()

    # Started again with no copy on the shared filesystem: the new job restores it on
    # its node; stopped, the job saves it there and the worker records that backup.
    assert not local_path(Notebook.objects.get(pk=created["id"])).exists()
    assert alice_api.post(url + "start/").status_code == 202
    wait_state(alice_api, url, "RUNNING")
    job_id = Notebook.objects.get(pk=created["id"]).runtime_state["job_id"]
    assert f"restored from backup {by_worker['id']} in Slurm job {job_id}" in editor_log.read_text()
    kernel = _kernel(alice_api, url, alice[1])
    assert kernel.execute("print(open('/workspace/work.txt').read())").strip() == "first"
    kernel.execute("open('/workspace/work.txt', 'w').write('second')")
    kernel.close()
    assert alice_api.post(url + "stop/").status_code == 202
    wait_state(alice_api, url, "STOPPED")
    latest, older = alice_api.get(url + "backups/").json()["results"]
    assert older["id"] == by_worker["id"]
    by_job = Backup.objects.get(pk=latest["id"])
    assert f"saved as {by_job.storage_name} ({by_job.size} bytes) in Slurm job {job_id}" in (
        editor_log.read_text()
    )
    assert show_job(job_id).state == "COMPLETED"  # it ended itself, saved: no KILL

    # The latest backup corrupt: the job refuses it, the owner reads why and what to do.
    storage = backup_storage()
    storage.delete(by_job.storage_name)
    storage.save(by_job.storage_name, ContentFile(b"not a tar archive"))
    assert alice_api.post(url + "start/").status_code == 202
    failed = wait_state(alice_api, url, "FAILED")
    assert failed["info"]["code"] == "START_FAILED"
    assert f"latest backup {by_job.pk} of" in failed["info"]["message"]
    assert "is corrupt" in failed["info"]["message"]
    assert f"The previous one is backup {older['id']}" in failed["info"]["message"]


def test_a_notebook_slurm_runs_on_another_node_answers_through_the_gateway(
    platform_server, celery_worker_process, conda_env, slurm_workers, slurm_idle, alice_api, alice
):
    # The worker's partition is the far node's: Slurm runs the job there, in a network
    # this machine reaches only at the node's address.
    slurm_workers(partition=slurm_idle.far_partition)
    created = alice_api.post("/api/v1/projects/alpha/notebooks/", SPEC, format="json").json()
    url = f"/api/v1/projects/alpha/notebooks/{created['id']}/"
    wait_state(alice_api, url, "RUNNING")
    notebook = Notebook.objects.get(pk=created["id"])
    assert show_job(notebook.runtime_state["job_id"]).node == slurm_idle.far_node
    assert notebook.editor_url.startswith(f"http://{slurm_idle.far_address}:")
    kernel = _kernel(alice_api, url, alice[1])
    assert kernel.execute("print(6 * 7)").strip() == "42"
    kernel.execute("open('/workspace/far.txt', 'w').write('from node2')")
    kernel.close()
    assert alice_api.post(url + "stop/").status_code == 202
    wait_state(alice_api, url, "STOPPED")
    assert len(alice_api.get(url + "backups/").json()["results"]) == 1


def test_a_node_failure_ends_the_notebook_failed_with_its_work_saved_not_requeued(
    platform_server, celery_worker_process, conda_env, slurm_workers, slurm_idle, alice_api, alice
):
    slurm_workers(partition=slurm_idle.far_partition)
    created = alice_api.post("/api/v1/projects/alpha/notebooks/", SPEC, format="json").json()
    url = f"/api/v1/projects/alpha/notebooks/{created['id']}/"
    wait_state(alice_api, url, "RUNNING")
    kernel = _kernel(alice_api, url, alice[1])
    kernel.execute("open('/workspace/work.txt', 'w').write('before the failure')")
    kernel.close()
    job_id = Notebook.objects.get(pk=created["id"]).runtime_state["job_id"]
    # The node dies (its slurmd and the job's processes killed outright) and the
    # administrator marks it down.
    slurm_idle.power_off_far_node()
    try:
        failed = _checked_state(alice_api, url, "FAILED")
        assert failed["info"]["code"] == "EDITOR_DIED"
        assert f"Slurm job {job_id} ended NODE_FAIL" in failed["info"]["message"]
        # Not run again behind the notebook's back: the job ended for good.
        assert show_job(job_id).state == "NODE_FAIL"
        # Saved by the worker from the shared copy: the job had no chance to.
        assert len(alice_api.get(url + "backups/").json()["results"]) == 1
    finally:
        slurm_idle.power_on_far_node()
    assert alice_api.post(url + "start/").status_code == 202
    wait_state(alice_api, url, "RUNNING")
    kernel = _kernel(alice_api, url, alice[1])
    assert kernel.execute("print(open('/workspace/work.txt').read())").strip() == (
        "before the failure"
    )
    kernel.close()
    alice_api.post(url + "stop/")
    wait_state(alice_api, url, "STOPPED")
