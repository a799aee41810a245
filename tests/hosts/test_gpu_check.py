"""scripts/gpu_check.py: it needs an NVIDIA GPU, so here it must say clearly that it
cannot run; what it decides from readings (inventory against nvidia-smi, the flavor,
what the kernel saw, whether the samples moved) is checked on a real H100's readings
(tests/fixtures/gpu/h100-80gb), and its refusal of a CPU build of torch on the real
PyTorch environment of this machine."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from nbcloud.catalog.services import catalog
from nbcloud.hosts.inventory import read_gpus
from support.gpu import H100, nvml_from_readings
from support.paths import ROOT, load_script

SCRIPT = ROOT / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    return load_script("gpu_check")


@pytest.fixture
def h100(monkeypatch):
    """NVML answering from the H100's readings; read_gpus() as a host registers them."""
    nvml_from_readings(monkeypatch)
    return read_gpus()


def test_without_a_gpu_it_exits_2_saying_why(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--data-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "gpu_check cannot run here: no NVIDIA GPU is usable on this machine" in done.stderr


def test_arguments(gpu_check):
    args = gpu_check.parse_args([])
    assert (args.framework, args.version, args.runtime, args.timeout) == (
        "pytorch",
        "2.14",
        "all",
        300,
    )
    args = gpu_check.parse_args(["--version", "2.13", "--runtime", "process"])
    assert (args.version, args.runtime) == ("2.13", "process")
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--runtime", "kubernetes"])


def test_the_flavor_follows_the_gpu_model(gpu_check):
    flavors = catalog().flavors
    assert gpu_check.flavor_for("NVIDIA H100 80GB HBM3", flavors) == "h100-1-gpu"
    assert gpu_check.flavor_for("Tesla V100S-PCIE-32GB", flavors) == "ai1-1-gpu"
    assert gpu_check.flavor_for("NVIDIA H200", flavors) == "h200-1-gpu"
    assert gpu_check.flavor_for("NVIDIA H200 NVL", flavors) == "h200-1-gpu"
    with pytest.raises(gpu_check.CannotRun, match=r"no flavor .* for a NVIDIA A2.*h200-1-gpu"):
        gpu_check.flavor_for("NVIDIA A2", flavors)


def test_the_h100_inventory_matches_its_nvidia_smi(gpu_check, h100):
    smi = gpu_check.parse_nvidia_smi((H100 / "nvidia-smi-query.csv").read_text())
    assert smi == [
        {
            "index": 0,
            "uuid": "GPU-fbb4043c-2b67-2c15-4836-29ef9786b504",
            "model": "NVIDIA H100 80GB HBM3",
            "memory_mib": 81559,
        }
    ]
    assert gpu_check.inventory_problems(h100, smi) == []


def test_an_inventory_that_differs_from_nvidia_smi_is_named(gpu_check, h100):
    smi = gpu_check.parse_nvidia_smi((H100 / "nvidia-smi-query.csv").read_text())
    smaller = [{**smi[0], "memory_mib": 40960}]
    assert gpu_check.inventory_problems(h100, smaller) == [
        "GPU-fbb4043c-2b67-2c15-4836-29ef9786b504: NVML says 81559 MiB, nvidia-smi 40960 MiB"
    ]
    second = {**smi[0], "index": 1, "uuid": "GPU-0000"}
    (problem,) = gpu_check.inventory_problems(h100, [*smi, second])
    assert "GPU-0000" in problem and problem.startswith("NVML lists")


def seen_on(gpu: dict, **changes) -> dict:
    """What the kernel of a notebook given exactly `gpu` reports."""
    return {
        "cuda_available": True,
        "device_count": 1,
        "CUDA_VISIBLE_DEVICES": gpu["uuid"],
        "device_nodes": [f"nvidia{gpu['minor']}"],
        "name": gpu["model"],
        "uuid": gpu["uuid"],
        "matmul_matches_cpu": True,
        **changes,
    }


def test_the_kernel_must_see_exactly_its_gpu(gpu_check, h100):
    (gpu,) = h100
    assert gpu_check.kernel_problems(seen_on(gpu), gpu) == []
    problems = gpu_check.kernel_problems(
        seen_on(gpu, device_count=2, device_nodes=["nvidia0", "nvidia1"]), gpu
    )
    assert problems == [
        "CUDA sees 2 devices, not exactly 1",
        "the notebook sees device nodes ['nvidia0', 'nvidia1'], not only /dev/nvidia0",
    ]
    wrong = gpu_check.kernel_problems(
        seen_on(gpu, CUDA_VISIBLE_DEVICES=None, matmul_matches_cpu=False), gpu
    )
    assert any("CUDA_VISIBLE_DEVICES is None" in p for p in wrong)
    assert any("differs from the CPU" in p for p in wrong)
    blind = gpu_check.kernel_problems({"error": "kernel died"}, gpu)
    assert blind[0] == "CUDA sees None devices, not exactly 1"


def test_the_samples_must_show_the_gpu_busy(gpu_check, h100):
    (gpu,) = h100
    idle = [{"gpus": [{"uuid": gpu["uuid"], "utilization_percent": 0}]}] * 3
    other = [{"gpus": [{"uuid": "GPU-other", "utilization_percent": 100}]}]
    busy = [{"gpus": [{"uuid": gpu["uuid"], "utilization_percent": 97}]}]
    assert gpu_check.gpu_busy(idle + other, gpu["uuid"]) is None
    assert gpu_check.gpu_busy(idle + busy, gpu["uuid"]) == 97
    assert gpu_check.gpu_busy([], gpu["uuid"]) is None


def test_a_cpu_build_of_torch_is_refused_naming_the_fix(gpu_check):
    """This machine's pytorch:2.13 takes the CPU build of torch from pip's find-links."""
    args = gpu_check.parse_args(["--version", "2.13"])
    with pytest.raises(gpu_check.CannotRun, match=r"not a CUDA build.*buildenvs --force"):
        gpu_check._environment(args)


def test_a_python_outside_the_system_folders_is_bound_into_the_sandbox(tmp_path):
    from workers.runtimes.process import interpreter_home

    env = tmp_path / "env"
    env.mkdir()
    assert interpreter_home(env) is None  # not a venv
    (env / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = true\n")
    assert interpreter_home(env) is None  # Debian's: the sandbox sees /usr anyway
    (env / "pyvenv.cfg").write_text("home = /opt/python3.12/bin\nversion = 3.12.3\n")
    assert interpreter_home(env) == Path("/opt/python3.12")


def python_outside_usr() -> Path:
    """An interpreter of this Python's version installed outside /usr (pyenv's, on these
    machines), or Debian's when there is none."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}")):
        if os.access(candidate, os.X_OK):
            return candidate
    return Path("/usr/bin/python3")


@pytest.mark.e2e
def test_an_environment_made_from_the_machines_own_torch_runs_a_notebook(
    gpu_check, settings, tmp_path
):
    """An air-gapped GPU host's way (--torch-site and --bundle: no package index, a CUDA
    torch of its own, scripts/device_gpu_check.sh), rehearsed on the CPU: the conda
    environment's packages stand for the bundle, pytorch:2.13's for the machine's
    torch, and an interpreter outside /usr for the machine's Python. A notebook of the
    environment so made starts through the platform and imports that torch."""
    from workers import environments

    for framework_id, version in (("conda", "py311"), ("pytorch", "2.13")):
        assert environments.is_built(framework_id, version), "run: make test-envs"
    (bundle,) = environments.env_dir("conda", "py311").glob("lib/python3*/site-packages")
    (torch_site,) = environments.env_dir("pytorch", "2.13").glob("lib/python3*/site-packages")
    python = python_outside_usr()
    # Beside the real environments: the sandbox has a /tmp of its own, so not tmp_path.
    envs = Path(tempfile.mkdtemp(prefix="test-envs-", dir=environments.env_dir("a", "1").parent))
    settings.NBCLOUD_ENVS_DIR = envs
    settings.NBCLOUD_ENV_PYTHON = str(python)

    target = gpu_check.host_environment("pytorch", "2.14", torch_site, bundle)
    try:
        assert environments.is_built("pytorch", "2.14")
        assert gpu_check.is_mounted(target / "torch") and (target / "bin" / "jupyter-lab").exists()
        # From inside: the interpreter, the bundle and the machine's torch are there to
        # read, and none of them can be written (nor can the notebook plant a module).
        code = (
            "import json, os, sys, torch, jupyterlab\n"
            "def writable(folder):\n"
            "    try:\n"
            "        open(os.path.join(folder, 'planted.py'), 'w').close()\n"
            "        return True\n"
            "    except OSError:\n"
            "        return False\n"
            "print(json.dumps({'torch': torch.__version__, 'base': sys.base_prefix,"
            " 'prefix': sys.prefix, 'torch_file': torch.__file__,"
            " 'writable': [f for f in (sys.base_prefix, sys.prefix,"
            " os.path.join(sys.prefix, 'torch'), os.path.join(sys.prefix, 'bundle'))"
            " if writable(f)]}))"
        )
        overrides = {"NBCLOUD_ENVS_DIR": str(envs), "NBCLOUD_ENV_PYTHON": str(python)}
        with gpu_check.running_platform(tmp_path / "platform", **overrides) as platform:
            spec = {
                "name": "made-from-the-host",
                "env": {
                    "framework_id": "pytorch",
                    "framework_version": "2.14",
                    "editor_id": "jupyterlab",
                },
                "resources": {"cpu": 1},
            }
            notebook = gpu_check.start_notebook(platform, spec)
            try:
                seen = gpu_check.last_json_line(gpu_check.run_in_kernel(platform, notebook, code))
            finally:
                gpu_check.remove_notebook(platform, notebook["id"])
    finally:
        gpu_check.release_host_environment(target)
        if not gpu_check.is_mounted(target / "torch"):
            shutil.rmtree(envs)
    assert seen["torch"].startswith("2.13.0"), seen
    assert seen["prefix"] == str(target)
    assert seen["torch_file"].startswith(str(target / "torch")), seen
    assert Path(seen["base"]) == Path(python).parent.parent, seen
    assert seen["writable"] == [], seen
    assert not gpu_check.is_mounted(target / "torch")
    assert not gpu_check.is_mounted(target / "bundle")


def test_a_machine_smaller_than_a_gpu_share_declares_the_share(gpu_check):
    """A 1-GPU H200 machine with 16 CPUs, 128 GiB and a 64 GiB disk offers less than
    h200-1-gpu's share (30 CPUs, 352 GiB, 705 GiB): without declaring it, the check's
    notebook would wait forever for a host."""
    gib = 1024**3
    h200 = catalog().flavors["h200-1-gpu"]
    declared = gpu_check.declared_capacity(h200, 16, 128 * gib, 64 * gib)
    assert declared == {
        "NBCLOUD_HOST_CPUS": str(h200.cpus),
        "NBCLOUD_HOST_MEMORY_GIB": str(h200.memory_gib),
        "NBCLOUD_HOST_DISK_GIB": str(h200.storage_gib),
    }
    assert gpu_check.declared_capacity(h200, 224, 2048 * gib, 30_000 * gib) == {}
    assert gpu_check.declared_capacity(h200, 224, 128 * gib, 30_000 * gib) == {
        "NBCLOUD_HOST_MEMORY_GIB": str(h200.memory_gib)
    }
