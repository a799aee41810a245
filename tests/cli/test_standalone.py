"""`nbc` on its own: the `nbcloud-cli` distribution (cli/pyproject.toml) holds the
`nbcloud.cli` package alone, needs only what it declares, and runs on Python 3.9.

The wheel is built from a copy of the checkout's files and installed into fresh
virtualenvs (Debian's /usr/bin/python3, and a Python 3.9 where this machine has
one) that have nothing of the rest of the project, then run against the real
platform on loopback.
"""

import ast
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer

from nbcloud.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "platform" / "nbcloud" / "cli"
# import name -> distribution in cli/pyproject.toml
THIRD_PARTY = {
    "typer": "typer",
    "rich": "rich",
    "httpx": "httpx",
    "yaml": "pyyaml",
    "tomli": "tomli",
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(level, module) of every import in a file; level > 0 for relative ones."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ""))
    return found


def test_the_cli_imports_only_the_standard_library_and_what_it_declares():
    declared = {
        re.match(r"[A-Za-z0-9._-]+", r)[0].lower()
        for r in tomllib.loads((ROOT / "cli" / "pyproject.toml").read_text())["project"][
            "dependencies"
        ]
    }
    assert declared == set(THIRD_PARTY.values())
    outside = []
    for path in sorted(CLI.glob("*.py")):
        for level, module in _imports(path):
            top = module.partition(".")[0]
            if level or module.startswith("nbcloud.cli"):
                continue
            if top in sys.stdlib_module_names or top in THIRD_PARTY:
                continue
            outside.append(f"{path.name}: {module}")
    assert outside == [], "nbcloud.cli imports only the stdlib, typer, rich, httpx, PyYAML"


def _commands(t: typer.Typer):
    if t.registered_callback:
        yield t.registered_callback.callback
    yield from (command.callback for command in t.registered_commands)
    for group in t.registered_groups:
        yield from _commands(group.typer_instance)


def test_typer_reads_every_option_from_objects_not_strings():
    """On Python 3.9 typer finds a typer.Option inside Annotated[...] only in an
    evaluated annotation: no command may have postponed (string) annotations."""
    commands = list(_commands(app))
    assert len(commands) > 40
    postponed = {
        f"{c.__module__}.{c.__name__}({name})"
        for c in commands
        for name, p in inspect.signature(c).parameters.items()
        if isinstance(p.annotation, str)
    }
    assert postponed == set()


def test_vermin_finds_nothing_that_needs_more_than_python_3_9():
    """Statically, for what the runs on 3.9 below do not reach (and machines without 3.9)."""
    vermin = Path(sys.executable).parent / "vermin"
    if not vermin.exists():
        pytest.skip("vermin is not installed here: it comes with the test extras")
    done = subprocess.run(
        [str(vermin), "-t=3.9-", "--violations", "--eval-annotations", "--no-tips", "-q", str(CLI)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# Only what a shell on a laptop has: nothing of the test run's own Python paths.
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}


def _python39() -> str | None:
    """A Python 3.9 on this machine (pyenv's, or python3.9 on PATH) that runs, if any."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [str(p) for p in sorted(pyenv.glob("3.9*/bin/python3.9"))]
    candidates += [p for p in [shutil.which("python3.9")] if p]
    for python in candidates:
        try:
            done = subprocess.run(
                [python, "-c", "import sys; print(sys.version_info[:2] == (3, 9))"],
                env=CLEAN_ENV,
                capture_output=True,
                text=True,
                timeout=30,
            )
        except OSError:
            continue
        if done.stdout.strip() == "True":
            return python
    return None


@pytest.fixture(scope="module")
def cli_wheel(tmp_path_factory) -> Path:
    """The nbcloud-cli wheel, built from a copy (the checkout gets no build folder)."""
    work = tmp_path_factory.mktemp("cli-build")
    shutil.copytree(ROOT / "cli", work / "cli")
    shutil.copytree(CLI, work / "platform" / "nbcloud" / "cli")
    out = work / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), "./cli"],
        cwd=work,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("nbcloud_cli-*.whl")
    return wheel


def _install(wheel: Path, python: str, where: Path) -> Path:
    """A fresh virtualenv of `python` with the wheel alone (and its dependencies)."""
    subprocess.run([python, "-m", "venv", str(where)], env=CLEAN_ENV, check=True, timeout=120)
    done = subprocess.run(
        [str(where / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return where / "bin"


@pytest.fixture(
    scope="module",
    params=["/usr/bin/python3", "3.9"],
    ids=["debian-python3", "python3.9"],
)
def standalone_nbc(request, cli_wheel, tmp_path_factory) -> Path:
    python = request.param if request.param != "3.9" else _python39()
    if python is None:
        pytest.skip("no Python 3.9 on this machine (python3.9 on PATH, or pyenv's)")
    return _install(cli_wheel, python, tmp_path_factory.mktemp("venv"))


def _run(bin_dir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(bin_dir / "nbc"), *args],
        cwd=bin_dir.parent,
        env={**CLEAN_ENV, "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_installed_cli_has_nothing_of_the_project(standalone_nbc):
    python = str(standalone_nbc / "python")
    probe = (
        "import importlib.util as u, json, sys, nbcloud.cli.main, nbcloud; "
        "from nbcloud.cli.output import parse_time; "
        "print(json.dumps({'version': list(sys.version_info[:2]), "
        "'time': parse_time('2026-01-02T03:04:05.123456Z').isoformat(), "
        "'nbcloud': list(nbcloud.__path__), "
        "'missing': [m for m in ('django', 'celery', 'rest_framework', 'nbcloud.settings', "
        "'workers') if u.find_spec(m) is None]}))"
    )
    done = subprocess.run(
        [python, "-c", probe],
        cwd=standalone_nbc.parent,  # not the checkout, whose folders `-c` would see
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["time"] == "2026-01-02T03:04:05.123456+00:00"  # the API's form, on 3.9 too
    assert seen["missing"] == ["django", "celery", "rest_framework", "nbcloud.settings", "workers"]
    assert all(str(standalone_nbc.parent) in p for p in seen["nbcloud"])  # its own copy
    version = _run(standalone_nbc, "--version")
    assert version.returncode == 0 and version.stdout.strip() == "nbc 0.1.0", version.stderr
    helped = _run(standalone_nbc, "notebook", "run", "--help")
    assert helped.returncode == 0, helped.stderr
    # The options' help texts: typer read them from the annotations.
    assert "Number of GPUs" in helped.stdout and "--label" in helped.stdout


@pytest.mark.django_db(transaction=True)
def test_the_installed_cli_talks_to_the_platform(standalone_nbc, as_alice, tmp_path):
    env = {k: v for k, v in as_alice.items() if v is not None}
    env["NBC_CONFIG"] = str(tmp_path / "config.toml")
    project = _run(standalone_nbc, "project", "-o", "json", env=env)
    assert project.returncode == 0, project.stderr
    assert json.loads(project.stdout)["name"] == "alpha"
    listed = _run(standalone_nbc, "notebook", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    refused = _run(standalone_nbc, "notebook", "get", "nope", env=env)
    assert refused.returncode == 1 and "nope" in refused.stderr
