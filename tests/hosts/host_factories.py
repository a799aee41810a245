"""For host tests: hosts of a chosen inventory, notebooks queued in order, and
host workers (real `celery worker --host-name` processes) to start and kill."""

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

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
    argv = [CELERY, "-A", "nbcloud", "worker", "--host-name", name, *options, "-c", "1"]
    argv += ["-n", f"agent-{name}@%h", "--loglevel", "INFO"]
    service_env = {**_service_env(broker_url, name, public_url), **env}
    return _start_service(f"worker-{name}", argv, service_env, lambda out: b"ready." in out)
