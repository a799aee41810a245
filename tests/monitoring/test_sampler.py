"""The per-notebook sampler: real numbers from a running editor, NVML from fixtures."""

import json
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from prometheus_client import generate_latest

from nbcloud.monitoring.models import NotebookSample
from nbcloud.notebooks.models import Notebook
from support.editors import Kernel
from support.factories import make_notebook
from support.metrics import samples
from workers import lifecycle, sampler, workspace

GPU_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "gpu" / "h100-80gb"


@pytest.fixture
def editor(transactional_db, broker_url, this_host, conda_env, alpha):
    """A notebook whose JupyterLab runs on this host, started as a host worker starts it."""
    notebook = make_notebook(alpha, state="STARTING", host=this_host, editor_secret="s" * 48)
    lifecycle.start(str(notebook.pk), this_host.name)
    notebook.refresh_from_db()
    assert notebook.state == "RUNNING", notebook.info_message
    yield notebook
    lifecycle.runtime_for(notebook).stop(5)
    workspace.remove_local(notebook)


def test_sampler_reads_a_running_editor(editor, this_host):
    runtime = lifecycle.runtime_for(editor)
    kernel = Kernel(runtime.endpoint.url, {"Authorization": f"token {editor.editor_secret}"})
    try:
        kernel.execute("open('/workspace/data.bin', 'wb').write(b'x' * 3_000_000)")
        host_sampler = sampler.Sampler(this_host.name, gpus=sampler.Gpus())
        first = host_sampler.sample()
        # About one core of work between two readings.
        kernel.execute("import time\nt = time.time()\nwhile time.time() - t < 3: pass")
        (second,) = host_sampler.sample()
        tree = psutil.Process(editor.runtime_state["pid"])
        rss = sum(p.memory_info().rss for p in [tree, *tree.children(recursive=True)])
    finally:
        kernel.close()

    assert len(first) == 1 and first[0].cpu_cores is None  # a rate needs two readings
    assert 0.3 < second.cpu_cores <= psutil.cpu_count()  # a shared machine gives less than 1
    assert second.cpu_seconds > first[0].cpu_seconds + 1
    assert second.memory_bytes == pytest.approx(rss, rel=0.1)  # the editor and its kernel
    assert second.memory_limit_bytes == lifecycle.launch_spec(editor).memory_bytes
    on_disk = workspace.tree_size(workspace.local_path(editor))
    assert second.workspace_bytes == pytest.approx(on_disk, abs=2**16)  # with the history file
    assert second.workspace_bytes >= 3_000_000
    # The process runtime shares the host's network: no per-notebook bytes to report.
    assert second.network_rx_bytes is None and second.gpus == []
    # Stored (a host worker running beside this test may add samples of its own).
    stored = NotebookSample.objects.filter(notebook=editor, host=this_host.name)
    # (it may read the same idle cpu_seconds as this test's first reading).
    for reading in (first[0], second):
        assert stored.filter(cpu_seconds=reading.cpu_seconds).exists()

    exposed = samples(generate_latest(sampler.registry(host_sampler)).decode())
    labels = (("host", this_host.name), ("notebook", str(editor.pk)), ("project", "alpha"))
    assert exposed[("nbcloud_notebook_memory_usage_bytes", labels)] == second.memory_bytes
    assert exposed[("nbcloud_notebook_cpu_seconds_total", labels)] == second.cpu_seconds


def test_samples_older_than_the_retention_are_pruned(db, alpha, settings):
    from datetime import timedelta

    from django.utils import timezone

    from nbcloud.monitoring.samples import record

    notebook = make_notebook(alpha)
    old = NotebookSample.objects.create(
        notebook=notebook, host="h", at=timezone.now() - timedelta(seconds=3601)
    )
    record([NotebookSample(notebook=notebook, host="h")])
    assert not NotebookSample.objects.filter(pk=old.pk).exists()
    assert NotebookSample.objects.filter(notebook=notebook).count() == 1


@pytest.fixture
def fake_nvml(monkeypatch):
    """pynvml's calls answered from a real H100's readings (tests/fixtures/gpu)."""
    import pynvml

    devices = {d["uuid"]: d for d in json.loads((GPU_FIXTURE / "nvml.json").read_text())["devices"]}

    def handle(uuid):
        if uuid not in devices:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return devices[uuid]

    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByUUID", handle)
    monkeypatch.setattr(
        pynvml,
        "nvmlDeviceGetUtilizationRates",
        lambda d: SimpleNamespace(gpu=d["util_gpu"], memory=d["util_mem"]),
    )
    monkeypatch.setattr(
        pynvml,
        "nvmlDeviceGetMemoryInfo",
        lambda d: SimpleNamespace(
            total=d["memory_total"],
            used=d["memory_used"],
            free=d["memory_total"] - d["memory_used"],
        ),
    )
    return devices


def test_gpus_are_read_by_uuid_through_nvml(fake_nvml, caplog):
    (uuid,) = fake_nvml
    gpus = sampler.Gpus()
    assert gpus.read([uuid]) == [
        {
            "uuid": uuid,
            "utilization_percent": 0,
            "memory_used_bytes": 503316480,
            "memory_total_bytes": 85520809984,
        }
    ]
    assert gpus.read(["GPU-not-here"]) == []  # gone from the host: logged, not fatal
    assert "GPU-not-here" in caplog.text


def test_a_host_without_nvml_samples_no_gpus(monkeypatch):
    import pynvml

    def no_driver():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    assert sampler.Gpus().read(["GPU-fbb4043c-2b67-2c15-4836-29ef9786b504"]) == []


def test_gpu_readings_are_exported_per_gpu(fake_nvml, editor, this_host):
    (uuid,) = fake_nvml
    fake_nvml[uuid]["util_gpu"] = 87  # a GPU at work
    Notebook.objects.filter(pk=editor.pk).update(gpu_uuids=[uuid])
    host_sampler = sampler.Sampler(this_host.name, gpus=sampler.Gpus())
    (sample,) = host_sampler.sample()
    assert sample.gpus[0]["utilization_percent"] == 87
    exposed = samples(generate_latest(sampler.registry(host_sampler)).decode())
    labels = (
        ("gpu", uuid),
        ("host", this_host.name),
        ("notebook", str(editor.pk)),
        ("project", "alpha"),
    )
    assert exposed[("nbcloud_notebook_gpu_utilization_percent", labels)] == 87
    assert exposed[("nbcloud_notebook_gpu_memory_used_bytes", labels)] == 503316480
    assert exposed[("nbcloud_notebook_gpu_memory_total_bytes", labels)] == 85520809984


@pytest.fixture
def contained(transactional_db, broker_url, docker_image, alpha, settings):
    """A notebook whose JupyterLab runs in a container on a docker-runtime host."""
    from nbcloud.hosts import services as host_services
    from nbcloud.hosts.inventory import read_inventory

    host = host_services.register(
        "sampled-docker", "BHS", read_inventory(settings.NBCLOUD_WORKSPACES_DIR), "docker"
    )
    notebook = make_notebook(
        alpha, state="STARTING", host=host, region="BHS", editor_secret="d" * 48
    )
    lifecycle.start(str(notebook.pk), host.name)
    notebook.refresh_from_db()
    assert notebook.state == "RUNNING", notebook.info_message
    yield notebook
    lifecycle.runtime_for(notebook).stop(5)
    workspace.remove_local(notebook)


def test_sampler_reads_a_container_through_the_same_contract(contained):
    runtime = lifecycle.runtime_for(contained)
    kernel = Kernel(runtime.endpoint.url, {"Authorization": f"token {contained.editor_secret}"})
    host_sampler = sampler.Sampler("sampled-docker", gpus=sampler.Gpus())
    try:
        host_sampler.sample()
        kernel.execute("import time\nt = time.time()\nwhile time.time() - t < 3: pass")
        (sample,) = host_sampler.sample()
    finally:
        kernel.close()
    assert 0.3 < sample.cpu_cores <= psutil.cpu_count()
    assert sample.memory_bytes > 20 * 2**20  # JupyterLab and a kernel, as the cgroup counts
    # The container's cgroup limit is the flavor's memory.
    assert sample.memory_limit_bytes == lifecycle.launch_spec(contained).memory_bytes
    assert sample.network_rx_bytes is not None  # the Engine reports the container's network
