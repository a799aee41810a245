"""The slurm runtime driven directly on a real one-node Slurm (the contract suite
runs on it too, in tests/workers/test_runtime_contract.py)."""

import dataclasses
import shutil

import pytest

from support.editors import Kernel
from support.gpu import nvml_readings
from support.waiting import wait_for
from workers.lifecycle import wait_ready
from workers.runtimes import StartError
from workers.runtimes.editors import readiness_headers
from workers.runtimes.slurm import SlurmRuntime, cluster_inventory, show_job

pytestmark = pytest.mark.e2e


def _fields(cluster, job_id: str) -> dict:
    out = cluster.run("scontrol", "show", "job", "-o", job_id)
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def test_a_job_slurm_cannot_run_yet_is_pending_with_its_reason_and_place(slurm_idle, make_spec):
    blocker = slurm_idle.submit(f"--cpus-per-task={slurm_idle.cpus}")
    wait_for(lambda: slurm_idle.job_state(blocker) == "RUNNING", what="the blocking job")
    first = SlurmRuntime(make_spec(cpus=2, memory_bytes=2 * 1024**3))
    second = SlurmRuntime(make_spec())
    try:
        assert first.start() is None  # nothing to reach yet
        second.start()
        assert first.poll() is None and first.endpoint is None
        assert first.pending() == "Waiting in Slurm: Resources, position 1 in partition nb."
        assert second.pending().endswith("position 2 in partition nb.")
        assert first.ran() == (None, None)
        # The flavor's request, under the notebook's name.
        asked = _fields(slurm_idle, first.job_id)
        assert asked["JobName"] == f"nbcloud-{first.spec.notebook_id}"
        assert asked["NumCPUs"] == "2"
        assert asked["MinMemoryNode"] == "2G"
        assert asked["TimeLimit"] == "UNLIMITED"
        assert asked["Requeue"] == "0"
    finally:
        first.stop(5)
        second.stop(5)
    assert first.poll() is not None
    assert show_job(first.job_id).state == "CANCELLED"


def test_a_fresh_runtime_without_state_adopts_the_notebooks_job_by_its_name(slurm_idle, make_spec):
    spec = make_spec()
    first = SlurmRuntime(spec)
    first.start()
    try:
        wait_ready(first, 60)
        # A worker that died between sbatch and saving the job id to the row.
        successor = SlurmRuntime(spec)
        assert successor.start() == first.endpoint
        assert successor.job_id == first.job_id
        started, ended = successor.ran()
        assert started is not None and ended is None
    finally:
        first.stop(5)


def test_max_runtime_becomes_a_slurm_time_limit_past_the_platforms(slurm_idle, make_spec):
    runtime = SlurmRuntime(make_spec(time_limit_minutes=65))
    runtime.start()
    try:
        assert _fields(slurm_idle, runtime.job_id)["TimeLimit"] == "01:05:00"
    finally:
        runtime.stop(5)


def test_a_request_the_cluster_cannot_meet_is_a_clear_start_error(slurm_idle, make_spec):
    # Two GPUs on a node of one.
    with pytest.raises(StartError) as refused:
        SlurmRuntime(make_spec(gpu_uuids=("slurm:vm:0", "slurm:vm:1"))).start()
    assert refused.value.user_message == "The Slurm cluster refused the request."
    assert "node configuration is not available" in str(refused.value)


def test_the_hosts_inventory_is_the_partitions_with_its_gres_gpus_named_as_flavors_do(
    slurm_idle, settings
):
    inventory = cluster_inventory("nb")
    assert inventory["cpus"] == slurm_idle.cpus
    assert inventory["memory_bytes"] == 16000 * 1024**2
    assert inventory["gpus"] == [
        {"index": 0, "uuid": f"slurm:{slurm_idle.node}:0", "model": "h100"}
    ]
    # A flavor's gpu_model ("H100 80GB HBM3") is found in the model the site maps its
    # GRES type to.
    settings.NBCLOUD_SLURM_GPU_MODELS = {"h100": "NVIDIA H100 80GB HBM3"}
    assert cluster_inventory("nb")["gpus"][0]["model"] == "NVIDIA H100 80GB HBM3"


def test_a_gpu_notebook_gets_the_gpu_slurm_allots_and_only_that_one(
    slurm_idle, make_spec, monkeypatch
):
    for name, value in slurm_idle.job_env.items():
        monkeypatch.setenv(name, value)
    (gpu,) = nvml_readings()["devices"]
    runtime = SlurmRuntime(make_spec(gpu_uuids=(f"slurm:{slurm_idle.node}:0",)))
    waiting = SlurmRuntime(make_spec(gpu_uuids=(f"slurm:{slurm_idle.node}:0",)))
    runtime.start()
    try:
        wait_ready(runtime, 60)
        asked = _fields(slurm_idle, runtime.job_id)
        assert asked["TresPerNode"] == "gres:gpu:1", asked
        kernel = Kernel(runtime.endpoint.url, readiness_headers(runtime.spec))
        seen = kernel.execute(
            "import os; print(os.environ['CUDA_VISIBLE_DEVICES'], "
            "sorted(n for n in os.listdir('/dev') if n.startswith('nvidia')))"
        )
        kernel.close()
        # The UUID nvidia-smi gives for the index Slurm allotted, and its device only.
        assert seen.strip() == f"{gpu['uuid']} ['nvidia0']"
        # The node's only GPU is taken: the next GPU job waits for it, CPUs free.
        waiting.start()
        assert waiting.pending().startswith("Waiting in Slurm: Resources")
    finally:
        waiting.stop(5)
        runtime.stop(5)


def _run_until_stopped(runtime: SlurmRuntime) -> str:
    """Start the job, wait for its editor, stop it; its log."""
    runtime.start()
    try:
        wait_ready(runtime, 60)
    finally:
        runtime.stop(5)
    return runtime.logs(50)


def test_the_job_saves_the_workspace_on_its_node_and_the_next_job_restores_it(
    slurm_idle, make_spec
):
    spec = make_spec()
    (spec.workspace / "notes.txt").write_text("kept across jobs")
    first = SlurmRuntime(spec)
    log = _run_until_stopped(first)
    saved = first.workspace_result()["saved"]
    # Saved by the job itself, which ended by its own exit, not Slurm's KILL.
    assert f"workspace saved as {saved['storage_name']}" in log
    assert f"in Slurm job {first.job_id}" in log
    assert show_job(first.job_id).state == "COMPLETED"
    assert saved["workspace_size"] >= len("kept across jobs")
    first.forget_workspace_result()
    assert first.workspace_result() == {}

    # The shared copy gone (the worker removed it after the stop): the next job
    # restores the backup the worker names, on its node, owned by the notebook.
    shutil.rmtree(spec.workspace)
    restore = {"pk": "7", "storage_name": saved["storage_name"], "sha256": saved["sha256"]}
    second = SlurmRuntime(dataclasses.replace(spec, restore=restore))
    second.start()
    try:
        wait_ready(second, 60)
        restored = spec.workspace / "notes.txt"
        assert restored.read_text() == "kept across jobs"
        assert restored.stat().st_uid == spec.uid
        assert f"workspace restored from backup 7 in Slurm job {second.job_id}" in second.logs(50)
    finally:
        second.stop(5)


def test_a_corrupt_backup_ends_the_job_with_the_reason_and_no_half_workspace(slurm_idle, make_spec):
    spec = make_spec()
    (spec.workspace / "a.txt").write_text("a")
    first = SlurmRuntime(spec)
    _run_until_stopped(first)
    saved = first.workspace_result()["saved"]
    shutil.rmtree(spec.workspace)
    restore = {"pk": "3", "storage_name": saved["storage_name"], "sha256": "0" * 64}
    second = SlurmRuntime(dataclasses.replace(spec, restore=restore))
    second.start()
    wait_for(lambda: second.poll() is not None, timeout=60, what="the job to end")
    assert second.poll() == 1
    failed = second.workspace_result()["restore_failed"]
    assert failed["kind"] == "corrupt"
    assert "sha256" in failed["detail"]
    assert not spec.workspace.exists()
    assert not list(spec.workspace.parent.glob(f".{spec.workspace.name}.restoring*"))


def test_a_job_told_to_discard_the_workspace_saves_nothing(slurm_idle, make_spec):
    spec = make_spec()
    (spec.workspace / "a.txt").write_text("a")
    runtime = SlurmRuntime(spec)
    runtime.start()
    try:
        wait_ready(runtime, 60)
    finally:
        runtime.discard_workspace()
        runtime.stop(5)
    assert runtime.workspace_result() == {}
    assert "workspace saved" not in runtime.logs(50)
    assert show_job(runtime.job_id).state == "COMPLETED"


def test_an_editor_on_another_node_answers_through_its_nodes_address(
    slurm_idle, make_spec, settings
):
    settings.NBCLOUD_SLURM_PARTITION = slurm_idle.far_partition
    runtime = SlurmRuntime(make_spec())
    runtime.start()
    try:
        wait_ready(runtime, 60)
        assert show_job(runtime.job_id).node == slurm_idle.far_node
        # Not the notebook's own address (routed on its node only): the node's, on a
        # port the job relays to the editor.
        assert runtime.endpoint.host == slurm_idle.far_address
        assert f"on {slurm_idle.far_node}, answering on {slurm_idle.far_address}:" in (
            runtime.logs(20)
        )
        kernel = Kernel(runtime.endpoint.url, readiness_headers(runtime.spec))
        assert kernel.execute("print(6 * 7)").strip() == "42"
        # From inside the notebook, its node's relay (on the node's own address) is
        # out of reach, as every address of its host is.
        tried = kernel.execute(
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('{runtime.endpoint.host}', {runtime.endpoint.port}), 3)\n"
            "    print('reached')\n"
            "except OSError as exc:\n"
            "    print('refused', type(exc).__name__)"
        )
        assert tried.startswith("refused"), tried
        kernel.close()
        # Its processes are not this machine's: no stats read from a pid here.
        assert runtime.stats() == {"running": True, "slurm_job": runtime.job_id}
    finally:
        runtime.stop(5)
    assert runtime.workspace_result()["saved"]["workspace_size"] > 0
