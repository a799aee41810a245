"""For host tests: hosts of a chosen inventory, notebooks queued in order, host
workers (real `celery worker --host-name` processes), and NVML answering
from the readings of a real H100 (tests/fixtures/gpu/h100-80gb/)."""

import csv
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pynvml
from conftest import _service_env, _start_service
from django.utils import timezone

from nbcloud.hosts.models import Host, HostState
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import State

GIB = 1024**3
T0 = timezone.now() - timedelta(hours=1)


def make_host(
    name,
    *,
    region="GRA",
    cpus=8,
    memory_gib=64,
    disk_gib=4000,
    gpus=0,
    model="Tesla V100S",
    state=HostState.READY,
):
    return Host.objects.create(
        name=name,
        region=region,
        state=state,
        cpus=cpus,
        memory_bytes=memory_gib * GIB,
        disk_bytes=disk_gib * GIB,
        gpus=[
            {
                "index": i,
                "uuid": f"GPU-{name}-{i}",
                "model": model,
                "memory_bytes": 32 * GIB,
            }
            for i in range(gpus)
        ],
    )


_order = iter(range(1_000_000))


def make_notebook(project, name, *, cpu=0, gpu=0, region="GRA", flavor="", **fields):
    """A QUEUED notebook (default flavors: V100S or CPU); each one made later queues later."""
    return Notebook.objects.create(
        project=project,
        name=name,
        framework_id="conda",
        framework_version="py311",
        editor_id="jupyterlab",
        flavor=flavor or ("ai1-1-gpu" if gpu else "ai1-1-cpu"),
        gpu=gpu,
        cpu=cpu,
        region=region,
        state=fields.pop("state", State.QUEUED),
        queued_at=T0 + timedelta(seconds=next(_order)),
        **fields,
    )


def release(notebook: Notebook) -> None:
    Notebook.objects.filter(pk=notebook.pk).update(state=State.STOPPED, host=None, gpu_uuids=[])


def fresh(notebook: Notebook) -> Notebook:
    notebook.refresh_from_db()
    return notebook


CELERY = str(Path(sys.executable).parent / "celery")


def host_worker(broker_url, public_url, name: str, *options: str, **env) -> subprocess.Popen:
    argv = [CELERY, "-A", "workers", "worker", "--host-name", name, *options, "-c", "1"]
    argv += ["-n", f"agent-{name}@%h", "--loglevel", "INFO"]
    service_env = {**_service_env(broker_url, name, public_url), **env}
    return _start_service(f"worker-{name}", argv, service_env, lambda out: b"ready." in out)


H100 = Path(__file__).resolve().parents[1] / "fixtures" / "gpu" / "h100-80gb"
MIB = 1024**2


def nvml_readings() -> dict:
    return json.loads((H100 / "nvml.json").read_text())


def nvidia_smi_query() -> list[dict]:
    with open(H100 / "nvidia-smi-query.csv") as f:
        return [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(f)]


def nvml_from_readings(monkeypatch) -> tuple[list, list]:
    """pynvml answering from the H100's readings (until the test ends).

    Returns the devices (append an NVMLError for a GPU that cannot be read)
    and the init/shutdown calls made.
    """
    devices, calls = nvml_readings()["devices"], []

    def device(handle):
        if isinstance(handle, pynvml.NVMLError):
            raise handle
        return handle

    def memory_info(handle):
        info = pynvml.c_nvmlMemory_t()
        info.total = device(handle)["memory_total"]
        info.used = device(handle)["memory_used"]
        info.free = info.total - info.used
        return info

    fakes = {
        "nvmlInit": lambda: calls.append("init"),
        "nvmlShutdown": lambda: calls.append("shutdown"),
        "nvmlDeviceGetCount": lambda: len(devices),
        "nvmlDeviceGetHandleByIndex": lambda i: devices[i],
        "nvmlDeviceGetName": lambda h: device(h)["name"],
        "nvmlDeviceGetUUID": lambda h: device(h)["uuid"],
        "nvmlDeviceGetMinorNumber": lambda h: device(h)["index"],
        "nvmlDeviceGetMemoryInfo": memory_info,
    }
    for name, fake in fakes.items():
        monkeypatch.setattr(pynvml, name, fake)
    return devices, calls
