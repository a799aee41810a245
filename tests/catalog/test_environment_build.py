"""Building the process runtime's environment virtualenvs, and `manage.py buildenvs`."""

import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from django.core.management import CommandError, call_command

from nbcloud.catalog.services import catalog
from workers import environments
from workers.environments import EnvironmentBuildError, build, env_dir, is_built


def write_catalogue(root: Path, frameworks: dict[str, list[str]], editor_reqs=()) -> Path:
    """A catalogue whose frameworks (id -> requirements) have one version, "1"."""
    root.mkdir(parents=True)
    (root / "catalog.yaml").write_text(
        yaml.safe_dump(
            {
                "editors": [{"id": "jupyterlab", "name": "J", "requirements": list(editor_reqs)}],
                "flavors": [
                    {
                        "id": "cpu",
                        "type": "cpu",
                        "cpus": 1,
                        "memory_gib": 1,
                        "storage_gib": 1,
                        "max": 1,
                    }
                ],
                "regions": [{"id": "GRA", "name": "Gravelines"}],
            }
        )
    )
    for fw_id, reqs in frameworks.items():
        (root / fw_id).mkdir()
        (root / fw_id / "manifest.yaml").write_text(
            yaml.safe_dump(
                {
                    "id": fw_id,
                    "name": fw_id,
                    "editors": ["jupyterlab"],
                    "versions": [{"version": "1", "default": True}],
                }
            )
        )
        (root / fw_id / "requirements.txt").write_text("".join(f"{r}\n" for r in reqs))
    return root


@pytest.fixture
def fresh_catalog():
    catalog.cache_clear()
    yield
    catalog.cache_clear()


@pytest.fixture
def tiny(settings, tmp_path, fresh_catalog):
    """A tmp catalogue (tiny: nothing to install; broken: a package that does not
    exist) and a tmp NBCLOUD_ENVS_DIR whose parents do not exist yet."""
    settings.NBCLOUD_ENVIRONMENTS_DIR = write_catalogue(
        tmp_path / "catalogue",
        {"tiny": [], "conda": [], "broken": ["nbcloud-no-such-package-xyz==0"]},
    )
    settings.NBCLOUD_ENVS_DIR = tmp_path / "var" / "envs"
    catalog.cache_clear()
    return settings


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_buildenvs_names_the_valid_choices_for_an_unknown_framework(fresh_catalog):
    with pytest.raises(CommandError) as info:
        call_command("buildenvs", "no-such-framework")
    message = str(info.value)
    assert "no-such-framework" in message
    for known in ("conda", "pytorch", "tensorflow", "one-for-all"):
        assert known in message


def test_buildenvs_names_the_valid_versions_for_an_unknown_version(fresh_catalog):
    with pytest.raises(CommandError, match=r"pytorch.*0\.0.*2\.13"):
        call_command("buildenvs", "pytorch:0.0")


def test_buildenvs_defaults_to_conda_and_all_means_every_version(fresh_catalog, monkeypatch):
    calls = []
    monkeypatch.setattr(environments, "build", lambda f, v, force, log: calls.append((f, v, force)))
    call_command("buildenvs", verbosity=0)
    assert calls == [("conda", "py311", False)]
    calls.clear()
    call_command("buildenvs", "pytorch", "pytorch:2.14", "pytorch:2.13", force=True, verbosity=0)
    assert calls == [("pytorch", "2.13", True), ("pytorch", "2.14", True)]
    calls.clear()
    call_command("buildenvs", all=True, verbosity=0)
    assert len(calls) == sum(len(fw.versions) for fw in catalog().frameworks.values())
    with pytest.raises(CommandError, match="not both"):
        call_command("buildenvs", "conda", all=True)


def test_a_tiny_environment_builds_once_and_runs(tiny):
    envs = tiny.NBCLOUD_ENVS_DIR
    assert not is_built("tiny", "1")
    logged = []
    old_umask = os.umask(0o077)  # the result must still be readable by everyone
    try:
        path = build("tiny", log=logged.append)
    finally:
        os.umask(old_umask)

    assert path == env_dir("tiny", "1") == envs / "tiny-1"
    assert is_built("tiny", "1")
    assert (path / ".nbcloud-built").read_text().strip()
    python = subprocess.run(
        [path / "bin" / "python", "-c", "import sys; print(sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert python.stdout.strip() == str(path)
    # Scripts made in the temporary folder point at the final one.
    pip = subprocess.run([path / "bin" / "pip", "--version"], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    assert str(path) in pip.stdout
    assert "include-system-site-packages = true" in (path / "pyvenv.cfg").read_text()
    # World-readable and traversable, created parents included.
    for folder in (path, envs, envs.parent):
        assert _mode(folder) == 0o755, folder
    assert _mode(path / "pyvenv.cfg") & 0o444 == 0o444
    assert all(_mode(p) & 0o004 for p in path.rglob("*") if not p.is_symlink())
    assert any("built" in line for line in logged)

    # A second build is a no-op.
    marker = (path / ".nbcloud-built").stat()
    inode = path.stat().st_ino
    logged.clear()
    assert build("tiny", "1", log=logged.append) == path
    assert (path / ".nbcloud-built").stat().st_mtime_ns == marker.st_mtime_ns
    assert path.stat().st_ino == inode
    assert logged == [f"tiny-1: up to date in {path}"]

    # Changed requirements mean the environment is no longer built.
    (tiny.NBCLOUD_ENVIRONMENTS_DIR / "tiny" / "requirements.txt").write_text("six>=1,<2\n")
    catalog.cache_clear()
    assert not is_built("tiny", "1")


def test_force_rebuilds_in_place_and_leaves_no_leftovers(tiny):
    path = build("tiny", log=lambda _: None)
    (path / "stale").write_text("from the first build")
    assert build("tiny", force=True, log=lambda _: None) == path
    assert not (path / "stale").exists()
    assert is_built("tiny", "1")
    assert sorted(p.name for p in path.parent.iterdir()) == [".tiny-1.lock", "tiny-1"]


def test_a_failing_pip_raises_and_leaves_nothing_behind(tiny, monkeypatch):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{port}/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "1")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for name in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)

    with pytest.raises(EnvironmentBuildError) as info:
        build("broken", log=lambda _: None)
    message = str(info.value)
    assert "broken-1" in message
    assert "nbcloud-no-such-package-xyz" in message  # pip's own output
    assert not env_dir("broken", "1").exists()
    assert not is_built("broken", "1")
    assert [p.name for p in tiny.NBCLOUD_ENVS_DIR.iterdir()] == [".broken-1.lock"]


def test_a_missing_python_names_the_debian_package(tiny, tmp_path):
    tiny.NBCLOUD_ENV_PYTHON = str(tmp_path / "no-python3")
    with pytest.raises(EnvironmentBuildError, match=r"apt-get install python3-venv"):
        build("tiny", log=lambda _: None)
    assert not env_dir("tiny", "1").exists()


def test_unknown_framework_or_version(tiny):
    with pytest.raises(EnvironmentBuildError, match="tiny"):
        build("nope")
    with pytest.raises(EnvironmentBuildError, match="no version '7'"):
        build("tiny", "7")
    assert not is_built("nope", "1")
