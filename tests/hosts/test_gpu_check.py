"""scripts/gpu_check.py: it needs an NVIDIA GPU, so here it must say clearly
that it cannot run; what it decides before starting anything is checked on
the H100's NVML readings."""

import importlib.util
import subprocess
import sys

import pytest

from nbcloud.catalog.services import catalog
from support.gpu import nvml_from_readings
from support.paths import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    assert (args.framework, args.version, args.timeout) == ("pytorch", "", 300)
    args = gpu_check.parse_args(["--framework", "tensorflow", "--version", "2.21"])
    assert (args.framework, args.version) == ("tensorflow", "2.21")
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--nope"])


def test_the_flavor_follows_the_gpu_model(gpu_check):
    flavors = catalog().flavors
    assert gpu_check.flavor_for("NVIDIA H100 80GB HBM3", flavors) == "h100-1-gpu"
    assert gpu_check.flavor_for("Tesla V100S-PCIE-32GB", flavors) == "ai1-1-gpu"
    with pytest.raises(gpu_check.CannotRun, match=r"no flavor .* for a NVIDIA A2.*h100-1-gpu"):
        gpu_check.flavor_for("NVIDIA A2", flavors)


def test_on_an_h100_it_wants_the_pytorch_environment_built(
    gpu_check, monkeypatch, settings, tmp_path
):
    nvml_from_readings(monkeypatch)
    settings.NBCLOUD_ENVS_DIR = tmp_path  # none built
    args = gpu_check.parse_args([])
    with pytest.raises(gpu_check.CannotRun, match=r"manage.py buildenvs pytorch:2.13"):
        gpu_check.check(args)
    with pytest.raises(gpu_check.CannotRun, match="unknown"):
        gpu_check.check(gpu_check.parse_args(["--framework", "nope"]))
