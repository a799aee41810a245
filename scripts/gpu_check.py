"""Check, on a machine with NVIDIA GPUs, that a notebook sees exactly its GPU.

    .venv/bin/python scripts/gpu_check.py [--framework pytorch] [--version 2.5]

Registers this machine as a host from NVML, starts a notebook of the framework
(default `pytorch`) with 1 GPU on the process runtime, and asks its kernel
what CUDA sees: `torch.cuda.device_count()` must be 1 and the device's UUID
the one the platform assigned. Then stops the notebook.

It runs the platform's own code in this process, on a database of its own
(SQLite under --data-dir, default var/gpu-check) with tasks run eagerly: no
broker, worker or web server to start. The framework's environment must be
built first: `manage.py buildenvs pytorch` (or `make envs` for conda). The
kernel is driven over the Jupyter websocket API (websocket-client, installed
with the test extras: `pip install -e '.[test]'`).

Exit status: 0 the check passed, 1 it failed, 2 it cannot run here (no
usable NVIDIA GPU, no flavor for this GPU model, environment not built).
"""

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "gpu-check"
KERNEL_CODE = """
import json, os, torch
count = torch.cuda.device_count()
print(json.dumps({
    "device_count": count,
    "uuid": str(torch.cuda.get_device_properties(0).uuid) if count else None,
    "name": torch.cuda.get_device_name(0) if count else None,
    "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
}))
"""


class CannotRun(Exception):
    """This machine cannot run the check; the message says why and what to do."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Start a 1-GPU notebook on this machine and check that its kernel sees "
        "exactly the GPU the platform assigned."
    )
    parser.add_argument("--framework", default="pytorch", help="framework id (default pytorch)")
    parser.add_argument("--version", default="", help="framework version (default: its default)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=ROOT / "var" / "gpu-check",
        help="database, workspaces and logs of the check (default var/gpu-check)",
    )
    parser.add_argument(
        "--timeout", type=int, default=300, help="seconds the editor may take to start"
    )
    return parser.parse_args(argv)


def flavor_for(gpu_model: str, flavors: dict) -> str:
    """The GPU flavor whose model this GPU is (NVML names it e.g. "NVIDIA H100 80GB HBM3")."""
    for flavor in flavors.values():
        if flavor.type == "gpu" and flavor.gpu_model.lower() in gpu_model.lower():
            return flavor.id
    known = ", ".join(f"{f.id} ({f.gpu_model})" for f in flavors.values() if f.type == "gpu")
    raise CannotRun(
        f"no flavor in environments/catalog.yaml is for a {gpu_model}: add one whose gpu_model "
        f"is part of that name (known: {known})"
    )


def _setup(args: argparse.Namespace) -> None:
    sys.path[:0] = [str(ROOT / "platform"), str(ROOT), str(ROOT / "tests")]
    args.data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["NBCLOUD_DATA_DIR"] = str(args.data_dir)
    os.environ["NBCLOUD_HOST_NAME"] = HOST
    os.environ["NBCLOUD_RUNTIME"] = "process"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nbcloud.settings")
    import django

    django.setup()
    from nbcloud.celery import app
    from nbcloud.datadir import prepare

    prepare()

    # Tasks run here, in order, as they are sent: no broker or worker needed.
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True


def _register(flavor_id: str):
    """This machine as a host offering at least one unit of the flavor."""
    from django.conf import settings

    from nbcloud.catalog.services import catalog
    from workers import lifecycle

    flavor = catalog().flavors[flavor_id]
    # The check is about which GPU the kernel sees, not about room: a machine
    # smaller than the flavor's per-GPU share is offered as if it had it.
    settings.NBCLOUD_HOST_CPUS = max(os.cpu_count() or 1, flavor.cpus)
    settings.NBCLOUD_HOST_MEMORY_GIB = flavor.memory_gib * 8
    settings.NBCLOUD_HOST_DISK_GIB = flavor.storage_gib * 8
    lifecycle.register_host(HOST, catalog().default_region.id, {"purpose": "gpu-check"})


def check(args: argparse.Namespace) -> int:
    from django.core.management import call_command

    from nbcloud.catalog.services import catalog
    from nbcloud.hosts.inventory import read_gpus
    from nbcloud.notebooks import services
    from nbcloud.notebooks.models import Notebook
    from nbcloud.projects.models import Project
    from workers import environments, lifecycle

    gpus = read_gpus()
    if not gpus:
        raise CannotRun(
            "no NVIDIA GPU is usable on this machine (NVML found none, or no driver): "
            "run this check on a machine with an NVIDIA GPU and its driver"
        )
    print(f"GPUs from NVML: {json.dumps(gpus)}")
    try:
        framework, version = environments.resolve(args.framework, args.version or None)
    except environments.EnvironmentBuildError as exc:
        raise CannotRun(str(exc)) from None
    if not environments.is_built(framework.id, version.version):
        raise CannotRun(
            f"environment {framework.id} {version.version} is not built on this machine: "
            f"run `.venv/bin/python manage.py buildenvs {framework.id}:{version.version}`"
        )
    flavor = flavor_for(gpus[0]["model"], catalog().flavors)
    call_command("migrate", verbosity=0)
    _register(flavor)
    project, _ = Project.objects.get_or_create(name="gpu-check")
    spec = {
        "name": "gpu-check",
        "framework_id": framework.id,
        "framework_version": version.version,
        "editor_id": "jupyterlab",
        "flavor": flavor,
        "gpu": 1,
        "region": catalog().default_region.id,
    }
    from django.conf import settings

    settings.NBCLOUD_EDITOR_READY_TIMEOUT = args.timeout
    notebook = Notebook.objects.get(pk=services.create(project, spec, actor="gpu_check").pk)
    try:
        if notebook.state != "RUNNING":
            print(f"FAIL: the notebook is {notebook.state}: {notebook.info_message}")
            return 1
        (assigned,) = notebook.gpu_uuids
        print(f"notebook {notebook.pk} RUNNING with GPU {assigned}")
        seen = _ask_kernel(notebook, lifecycle.launch_spec(notebook))
        print(f"the kernel sees: {json.dumps(seen)}")
        ok = seen["device_count"] == 1 and f"GPU-{seen['uuid']}" == assigned
        print("PASS" if ok else f"FAIL: expected exactly 1 device, {assigned}")
        return 0 if ok else 1
    finally:
        notebook.refresh_from_db()
        if notebook.state == "RUNNING":
            services.stop(notebook, actor="gpu_check")


def _ask_kernel(notebook, spec) -> dict:
    from support.editors import Kernel
    from workers.runtimes.editors import readiness_headers

    kernel = Kernel(f"{notebook.editor_url}{spec.base_url}", readiness_headers(spec))
    try:
        return json.loads(kernel.execute(KERNEL_CODE).strip().splitlines()[-1])
    finally:
        kernel.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _setup(args)
    try:
        return check(args)
    except CannotRun as exc:
        print(f"gpu_check cannot run here: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
