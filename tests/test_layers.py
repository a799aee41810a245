"""The layers hold: control never imports the host side, runtimes and host code
never import the API, the CLI imports nothing of Django (.importlinter), and the
web process never loads host code."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    run = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout or "broken" not in run.stdout.split("Contracts:")[-1]


def test_the_control_plane_loads_no_host_code():
    """Import the web process's app and every module of the control plane (what the
    web process, beat and a control worker can load), then look at what got imported:
    `workers` (an app for its host set-up commands) and its AppConfig at most."""
    probe = """
import importlib, pkgutil, sys
import django
django.setup()
import nbcloud, nbcloud.asgi
from django.urls import get_resolver
get_resolver().url_patterns
for module in pkgutil.walk_packages(nbcloud.__path__, "nbcloud."):
    if ".migrations" not in module.name and not module.name.startswith("nbcloud.cli"):
        importlib.import_module(module.name)
loaded = sorted(m for m in sys.modules if m == "workers" or m.startswith("workers."))
print("loaded:" + ",".join(loaded))
"""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "nbcloud.settings"}
    env["PYTHONPATH"] = f"{ROOT / 'platform'}:{ROOT}"
    run = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    line = [x for x in run.stdout.splitlines() if x.startswith("loaded:")][-1]
    loaded = set(line.removeprefix("loaded:").split(",")) - {""}
    assert loaded <= {"workers", "workers.apps"}, sorted(loaded)
