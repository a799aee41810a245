"""Prove, on a machine with NVIDIA GPUs, that a notebook gets its GPU end to end.

    .venv/bin/python scripts/gpu_check.py [--version 2.14] [--runtime process|docker|all]

1. inventory: the GPUs NVML reports (what a host registers) are those `nvidia-smi
   --query-gpu` lists: same UUIDs, models and memory;
2. flavor: the catalogue has a flavor for this GPU model;
3. environment: builds the PyTorch environment (`manage.py buildenvs pytorch:2.14`,
   skipped while up to date) and checks that its torch is a CUDA build; on a machine
   that reaches no package index but has a CUDA torch of its own (an air-gapped
   GPU host: scripts/device_gpu_check.sh), `--torch-site` makes the environment from that torch
   and the editors' packages of `--bundle` instead (host_environment);
4. for each runtime (process; docker too where Docker and the NVIDIA container toolkit
   are present): starts the platform as `make run` does, with this machine as its host
   (scripts/platform_session.py), creates a 1-GPU PyTorch notebook through the API,
   and in its kernel, reached through the gateway: multiplies matrices on CUDA for
   about COMPUTE_SECONDS, reads `torch.cuda.get_device_name()`, `CUDA_VISIBLE_DEVICES`
   and the /dev/nvidia<N> nodes it can see, which must be exactly the GPU the platform
   assigned. Meanwhile the notebook's GPU samples (GET .../metrics/) must show the GPU
   busy. Then stops and deletes the notebook.

Prints one line per check and writes them to var/gpu-check.json. Exit status: 0 every
check passed, 1 one failed, 2 it cannot run here (no usable NVIDIA GPU, no flavor
for this GPU model, no CUDA build of torch). The decisions it makes from readings
(the inventory comparison, the flavor, the kernel's and the samples' verdicts) are
plain functions, tested on a real H100's readings in tests/hosts/test_gpu_check.py.
"""

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from platform_session import (  # noqa: E402
    ROOT,
    CheckError,
    last_json_line,
    manage,
    remove_notebook,
    run_in_kernel,
    running_platform,
    start_notebook,
)

MIB = 1024**2
COMPUTE_SECONDS = 30
SMI_QUERY = ["nvidia-smi", "--query-gpu=index,uuid,name,memory.total", "--format=csv"]
# Run in the notebook's kernel: what CUDA and /dev show it, then matrix products for
# `seconds` (so that the platform's samples see the GPU busy).
KERNEL_CODE = """
import json, os, re, time, torch
seconds = {seconds}
seen = {{
    "cuda_available": torch.cuda.is_available(),
    "device_count": torch.cuda.device_count(),
    "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
    "device_nodes": sorted(n for n in os.listdir("/dev") if re.fullmatch(r"nvidia[0-9]+", n)),
    "torch": torch.__version__,
    "torch_cuda": torch.version.cuda,
}}
if seen["device_count"]:
    seen["name"] = torch.cuda.get_device_name(0)
    seen["uuid"] = "GPU-" + str(torch.cuda.get_device_properties(0).uuid)
    a = torch.randn(4096, 4096, device="cuda")
    b = torch.randn(4096, 4096, device="cuda")
    check = (a[:64] @ b[:, :64]).cpu()
    seen["matmul_matches_cpu"] = bool(torch.allclose(check, a[:64].cpu() @ b[:, :64].cpu(), rtol=1e-2, atol=1e-2))
    started, products = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        c = a @ b
        products += 1
        if products % 20 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    seen["products"] = products
    seen["tflops"] = round(products * 2 * 4096**3 / (time.monotonic() - started) / 1e12, 1)
print(json.dumps(seen))
"""


class CannotRun(Exception):
    """This machine cannot run the check; the message says why and what to do."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Start a 1-GPU PyTorch notebook through the platform on this machine "
        "and check that its kernel computes on exactly the GPU the platform assigned."
    )
    parser.add_argument("--framework", default="pytorch", help="framework id (default pytorch)")
    parser.add_argument(
        "--version",
        default="2.14",
        help="framework version (default 2.14: PyPI's CUDA build of torch, with torchvision)",
    )
    parser.add_argument(
        "--runtime",
        choices=("process", "docker", "all"),
        default="all",
        help="runtimes to check (default all: docker too where it can run GPUs)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=ROOT / "var" / "gpu-check",
        help="the platform's data directory (default var/gpu-check; emptied first)",
    )
    parser.add_argument(
        "--timeout", type=int, default=300, help="seconds the notebook may take to start"
    )
    parser.add_argument(
        "--torch-site",
        type=Path,
        help="the site-packages folder of this machine's own CUDA torch: the environment "
        "is made from it (and --bundle) instead of installing its requirements",
    )
    parser.add_argument(
        "--bundle",
        type=Path,
        help="with --torch-site: a folder of the editors' packages for the environment's "
        "Python (scripts/device_bundle.py)",
    )
    args = parser.parse_args(argv)
    if (args.torch_site is None) != (args.bundle is None):
        parser.error("--torch-site and --bundle go together")
    return args


# Decisions from readings: plain functions, tested without a GPU.


def parse_nvidia_smi(text: str) -> list[dict]:
    """`nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv` (with its
    header; any further columns are ignored) -> [{index, uuid, model, memory_mib}]."""
    rows = csv.DictReader(io.StringIO(text.strip()), skipinitialspace=True)
    gpus = []
    for row in rows:
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        memory = next(v for k, v in row.items() if k.startswith("memory.total"))
        gpus.append(
            {
                "index": int(row["index"]),
                "uuid": row["uuid"],
                "model": row["name"],
                "memory_mib": int(memory.split()[0]),
            }
        )
    return gpus


def inventory_problems(nvml: list[dict], smi: list[dict]) -> list[str]:
    """How the platform's NVML inventory differs from nvidia-smi's list (none: [])."""
    problems = []
    by_uuid = {gpu["uuid"]: gpu for gpu in smi}
    if {g["uuid"] for g in nvml} != set(by_uuid):
        problems.append(
            f"NVML lists {sorted(g['uuid'] for g in nvml)}, nvidia-smi {sorted(by_uuid)}"
        )
    for gpu in nvml:
        other = by_uuid.get(gpu["uuid"])
        if other is None:
            continue
        if gpu["model"] != other["model"]:
            problems.append(f"{gpu['uuid']}: NVML says {gpu['model']}, nvidia-smi {other['model']}")
        if gpu["memory_bytes"] // MIB != other["memory_mib"]:
            problems.append(
                f"{gpu['uuid']}: NVML says {gpu['memory_bytes'] // MIB} MiB, "
                f"nvidia-smi {other['memory_mib']} MiB"
            )
        if gpu["index"] != other["index"]:
            problems.append(
                f"{gpu['uuid']}: NVML index {gpu['index']}, nvidia-smi {other['index']}"
            )
    return problems


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


def declared_capacity(flavor, cpus: int, memory_bytes: int, disk_bytes: int) -> dict[str, str]:
    """The host settings that let this machine offer one GPU share of flavor when it
    has less than that share (a 1-GPU machine smaller than the host class the flavor
    describes: 16 CPUs beside an H200 whose share is 30): {} when it has enough. The
    notebook is then placed, and its limits are the share's, not the machine's."""
    gib = 1024**3
    wanted = {
        "NBCLOUD_HOST_CPUS": (flavor.cpus, cpus),
        "NBCLOUD_HOST_MEMORY_GIB": (flavor.memory_gib, memory_bytes // gib),
        "NBCLOUD_HOST_DISK_GIB": (flavor.storage_gib, disk_bytes // gib),
    }
    return {name: str(need) for name, (need, have) in wanted.items() if have < need}


def kernel_problems(seen: dict, assigned: dict) -> list[str]:
    """What is wrong in what the kernel saw, for a notebook assigned the GPU `assigned`
    (an NVML inventory entry: uuid, minor, model)."""
    problems = []
    if not seen.get("cuda_available") or seen.get("device_count") != 1:
        problems.append(f"CUDA sees {seen.get('device_count')} devices, not exactly 1")
    if seen.get("CUDA_VISIBLE_DEVICES") != assigned["uuid"]:
        problems.append(
            f"CUDA_VISIBLE_DEVICES is {seen.get('CUDA_VISIBLE_DEVICES')!r}, "
            f"not the assigned {assigned['uuid']}"
        )
    if seen.get("device_nodes") != [f"nvidia{assigned['minor']}"]:
        problems.append(
            f"the notebook sees device nodes {seen.get('device_nodes')}, "
            f"not only /dev/nvidia{assigned['minor']}"
        )
    if seen.get("device_count"):
        if seen.get("uuid") != assigned["uuid"]:
            problems.append(f"CUDA's device is {seen.get('uuid')}, not {assigned['uuid']}")
        if seen.get("name") != assigned["model"]:
            problems.append(
                f"CUDA names the device {seen.get('name')!r}, NVML {assigned['model']!r}"
            )
        if not seen.get("matmul_matches_cpu"):
            problems.append("the product computed on CUDA differs from the CPU's")
    return problems


def gpu_busy(samples: list[dict], uuid: str, threshold: int = 10) -> int | None:
    """The highest utilisation of GPU uuid in the samples, when it reached threshold
    percent (the samples moved while the kernel computed); None otherwise."""
    readings = [
        gpu.get("utilization_percent") or 0
        for sample in samples
        for gpu in sample.get("gpus") or []
        if gpu.get("uuid") == uuid
    ]
    busiest = max(readings, default=0)
    return busiest if busiest >= threshold else None


def docker_gpus_missing() -> str | None:
    """Why the docker runtime cannot run GPU notebooks here, or None when it can."""
    if shutil.which("docker") is None:
        return "no docker client"
    info = subprocess.run(
        ["docker", "info", "--format", "{{json .Runtimes}}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if info.returncode != 0:
        return f"no Docker Engine answers ({info.stderr.strip()[:200]})"
    if "nvidia" not in info.stdout and not shutil.which("nvidia-container-runtime-hook"):
        return "the NVIDIA container toolkit is not installed (no nvidia runtime in docker info)"
    return None


# The check itself: needs the GPU.


class Report:
    def __init__(self) -> None:
        self.checks: list[dict] = []

    def record(self, name: str, problems: list[str], **facts) -> bool:
        ok = not problems
        self.checks.append({"check": name, "ok": ok, "problems": problems, **facts})
        print(f"{'PASS' if ok else 'FAIL'} {name}: {json.dumps(facts) if ok else problems}")
        return ok

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks)


def _setup_django(data_dir: Path) -> None:
    sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]
    os.environ["NBCLOUD_DATA_DIR"] = str(data_dir)
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("CELERY_BROKER_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nbcloud.settings")
    import django

    django.setup()


def host_environment(framework_id: str, version: str, torch_site: Path, bundle: Path) -> Path:
    """Make the environment framework_id:version from packages already on this machine:
    a venv of NBCLOUD_ENV_PYTHON (without pip) that sees, through a .pth file, bundle
    (the editors' packages) and torch_site (the machine's own torch), both bind-mounted
    inside the venv so that the notebook's sandbox, which sees the venv, sees them too.
    Marked built, so the platform starts notebooks of it; release_host_environment
    undoes the mounts. For a GPU machine that cannot download a CUDA build of torch."""
    from django.conf import settings

    from workers import environments

    target = environments.env_dir(framework_id, version)
    release_host_environment(target)
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    python = str(settings.NBCLOUD_ENV_PYTHON)
    subprocess.run(
        [python, "-m", "venv", "--without-pip", "--system-site-packages", str(target)],
        check=True,
    )
    for name, source in (("bundle", bundle), ("torch", torch_site)):
        point = target / name
        point.mkdir()
        subprocess.run(["mount", "--bind", str(source.resolve()), str(point)], check=True)
    (site,) = target.glob("lib/python3*/site-packages")
    (site / "nbcloud-host.pth").write_text(f"{target / 'bundle'}\n{target / 'torch'}\n")
    _console_scripts(bundle, target / "bin")
    (target / environments.MARKER).write_text(
        environments.build_digest(framework_id, version) + "\n"
    )
    subprocess.run(["chmod", "-R", "a+rX", str(target / "bin"), str(site)], check=True)
    return target


def _console_scripts(bundle: Path, bin_dir: Path) -> None:
    """bin/<name> for every console script of the bundle's packages (`python -m
    jupyter lab` runs `jupyter-lab` from PATH), run by the venv's python."""
    from importlib.metadata import distributions

    for dist in distributions(path=[str(bundle)]):
        for entry in dist.entry_points:
            if entry.group != "console_scripts" or (bin_dir / entry.name).exists():
                continue
            script = bin_dir / entry.name
            script.write_text(
                f"#!{bin_dir / 'python'}\n"
                "import sys\n"
                "from importlib.metadata import EntryPoint\n"
                f"main = EntryPoint(name={entry.name!r}, value={entry.value!r}, "
                "group='console_scripts').load()\n"
                "sys.exit(main())\n"
            )
            script.chmod(0o755)


def is_mounted(path: Path) -> bool:
    """Whether something is mounted on path (a bind mount of the same filesystem too,
    which Path.is_mount misses)."""
    wanted = str(path.resolve())
    with open("/proc/self/mountinfo") as mounts:
        return any(
            line.split()[4].replace("\\040", " ") == wanted for line in mounts if line.strip()
        )


def release_host_environment(target: Path) -> None:
    """Undo host_environment's bind mounts (none: nothing to do)."""
    for name in ("bundle", "torch"):
        while is_mounted(target / name):
            subprocess.run(["umount", str(target / name)], check=True)


def _environment(args: argparse.Namespace) -> Path:
    from workers import environments

    try:
        framework, version = environments.resolve(args.framework, args.version or None)
    except environments.EnvironmentBuildError as exc:
        raise CannotRun(str(exc)) from None
    spec = f"{framework.id}:{version.version}"
    if args.torch_site is not None:
        print(f"making {spec} from {args.torch_site} and {args.bundle}", flush=True)
        path = host_environment(framework.id, version.version, args.torch_site, args.bundle)
        args.made_environment = path
        return path
    print(f"building {spec} (skipped while up to date)", flush=True)
    done = manage(args.data_dir.with_name(f"{args.data_dir.name}-build"), "buildenvs", spec)
    if done.returncode != 0:
        raise CannotRun(f"the environment {spec} did not build (see above)")
    path = environments.env_dir(framework.id, version.version)
    probe = subprocess.run(
        [str(path / "bin" / "python"), "-c", "import torch; print(torch.version.cuda or '')"],
        capture_output=True,
        text=True,
    )
    if not probe.stdout.strip():
        raise CannotRun(
            f"{spec}'s torch is not a CUDA build ({probe.stderr.strip()[-200:]}): pip took a "
            "CPU build from its find-links; rebuild it with PIP_FIND_LINKS= and "
            f"`manage.py buildenvs --force {spec}`"
        )
    return path


def _notebook_round(report: Report, runtime: str, args, flavor: str, gpus: list[dict]) -> None:
    from nbcloud.catalog.services import catalog

    spec = {
        "name": f"gpu-check-{runtime}",
        "env": {
            "framework_id": args.framework,
            "framework_version": args.version,
            "editor_id": "jupyterlab",
        },
        "resources": {"flavor": flavor, "gpu": 1},
        "region": catalog().default_region.id,
    }
    overrides = {"NBCLOUD_RUNTIME": runtime, "NBCLOUD_SAMPLE_INTERVAL": "2"}
    args.data_dir.mkdir(parents=True, exist_ok=True)
    declared = declared_capacity(
        catalog().flavors[flavor],
        os.cpu_count() or 1,
        psutil.virtual_memory().total,
        shutil.disk_usage(args.data_dir).total,
    )
    if declared:
        print(f"NOTE this machine is smaller than one {flavor} share; declared: {declared}")
    overrides.update(declared)
    with running_platform(args.data_dir / runtime, **overrides) as platform:
        notebook = start_notebook(platform, spec, timeout=args.timeout)
        try:
            uuids = notebook["status"]["gpu_uuids"]
            if len(uuids) != 1:
                raise CheckError(f"a 1-GPU notebook was assigned {uuids}")
            (uuid,) = uuids
            assigned = next(g for g in gpus if g["uuid"] == uuid)
            samples: list[dict] = []
            seen: dict = {}

            def compute():
                code = KERNEL_CODE.format(seconds=COMPUTE_SECONDS)
                try:
                    seen.update(last_json_line(run_in_kernel(platform, notebook, code)))
                except (CheckError, AssertionError, OSError) as exc:
                    seen["error"] = str(exc)[-500:]

            worker = threading.Thread(target=compute)
            worker.start()
            while worker.is_alive():
                time.sleep(2)
                reply = get_metrics(platform, notebook["id"])
                samples = reply.get("samples", samples)
            worker.join()
            report.record(f"{runtime}: kernel", kernel_problems(seen, assigned), **seen)
            busiest = gpu_busy(samples, uuid)
            report.record(
                f"{runtime}: GPU samples",
                [] if busiest else [f"no sample of {uuid} showed it busy: {samples[-3:]}"],
                busiest_percent=busiest,
                samples=len(samples),
            )
        finally:
            remove_notebook(platform, notebook["id"])


def get_metrics(platform, notebook_id: str) -> dict:
    reply = requests.get(
        f"{platform.api}{notebook_id}/metrics/", headers=platform.headers, timeout=30
    )
    return reply.json() if reply.ok else {}


def check(args: argparse.Namespace) -> int:
    from nbcloud.catalog.services import catalog
    from nbcloud.hosts.inventory import read_gpus

    gpus = read_gpus()
    if not gpus:
        raise CannotRun(
            "no NVIDIA GPU is usable on this machine (NVML found none, or no driver): "
            "run this check on a machine with an NVIDIA GPU and its driver"
        )
    report = Report()
    smi = subprocess.run(SMI_QUERY, capture_output=True, text=True, timeout=60)
    report.record(
        "inventory",
        inventory_problems(gpus, parse_nvidia_smi(smi.stdout))
        if smi.returncode == 0
        else [f"nvidia-smi failed: {smi.stderr.strip()}"],
        gpus=gpus,
    )
    flavor = flavor_for(gpus[0]["model"], catalog().flavors)
    report.record("flavor", [], flavor=flavor, model=gpus[0]["model"])
    _environment(args)
    runtimes = ["process"] if args.runtime != "docker" else []
    if args.runtime in ("docker", "all"):
        missing = docker_gpus_missing()
        if missing is None:
            runtimes.append("docker")
        else:
            print(f"SKIP docker: {missing}")
    try:
        for runtime in runtimes:
            try:
                _notebook_round(report, runtime, args, flavor, gpus)
            except CheckError as exc:
                report.record(f"{runtime}: notebook", [str(exc)])
    finally:
        if getattr(args, "made_environment", None) is not None:
            release_host_environment(args.made_environment)
    out = ROOT / "var" / "gpu-check.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "checks": report.checks}))
    print("PASS" if report.ok else "FAIL")
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _setup_django(args.data_dir)
    try:
        return check(args)
    except CannotRun as exc:
        print(f"gpu_check cannot run here: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
