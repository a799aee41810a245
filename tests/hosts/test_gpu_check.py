"""scripts/gpu_check.py: it needs an NVIDIA GPU, so here it must say clearly that it
cannot run; what it decides from readings (inventory against nvidia-smi, the flavor,
what the kernel saw, whether the samples moved) is checked on a real H100's readings
(tests/fixtures/gpu/h100-80gb), and its refusal of a CPU build of torch on the real
PyTorch environment of this machine."""

import importlib.util
import subprocess
import sys

import pytest

from nbcloud.catalog.services import catalog
from nbcloud.hosts.inventory import read_gpus
from support.gpu import H100, nvml_from_readings
from support.paths import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
