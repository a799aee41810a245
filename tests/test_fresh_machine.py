"""What `make run` does before anything starts (scripts/bootstrap.sh): the system
packages first, and a half-made `.venv` made again.

The whole path on a fresh Debian 12 root is CI's `.ci/fresh-machine.sh`; these
check the two decisions on this machine, offline.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOOTSTRAP = ROOT / "scripts" / "bootstrap.sh"
DEBIAN_PYTHON = Path("/usr/bin/python3")
# Debian's python3-venv brings pip's wheel here: pip upgrades itself from it
# with no index.
DEBIAN_WHEELS = Path("/usr/share/python-wheels")


# A PEP 517 backend in the project itself, so pip needs no index to install it.
IN_TREE_BACKEND = """
import os, zipfile

def _wheel(directory, editable):
    name = "demo-0-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(directory, name), "w") as whl:
        if editable:
            whl.writestr("demo.pth", os.getcwd() + "\\n")
        else:
            whl.write("demo/__init__.py", "demo/__init__.py")
        whl.writestr("demo-0.dist-info/METADATA", "Metadata-Version: 2.1\\nName: demo\\nVersion: 0\\n")
        whl.writestr("demo-0.dist-info/WHEEL", "Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n")
        whl.writestr("demo-0.dist-info/RECORD", "")
    return name

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return _wheel(wheel_directory, False)

def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    return _wheel(wheel_directory, True)
"""


@pytest.fixture
def shared_dir():
    """A folder the unprivileged user can read (pytest's tmp_path is root's only)."""
    folder = Path(tempfile.mkdtemp(prefix="nbcloud-fresh-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _fake_dpkg(folder: Path, installed: set[str]) -> Path:
    """A dpkg-query that knows only `installed`, first on PATH."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    script = bin_dir / "dpkg-query"
    cases = " | ".join(sorted(installed)) or "__none__"
    script.write_text(
        "#!/bin/sh\n"
        'for last; do :; done\ncase "$last" in\n'
        f'  {cases}) printf "ii " ;;\n  *) exit 1 ;;\nesac\n'
    )
    script.chmod(0o755)
    folder.chmod(0o755)
    return bin_dir


def _as_a_user(args: list[str], bin_dir: Path, home: Path, **env) -> subprocess.CompletedProcess:
    prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    return subprocess.run(
        [*(prefix if os.geteuid() == 0 else []), "bash", str(BOOTSTRAP), *args],
        env={"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home), **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )


def test_a_user_is_told_the_one_command_first(shared_dir):
    """The process runtime needs root (a uid and a network per notebook), and
    `sudo make run` installs what is missing: that is the one command."""
    bin_dir = _fake_dpkg(shared_dir, {"bubblewrap", "nftables"})
    for what in ("run", "test"):
        done = _as_a_user(["sysdeps", what], bin_dir, shared_dir)
        assert done.returncode == 2, done.stderr
        assert done.stdout == ""
        assert f"    sudo make {what}" in done.stderr.splitlines()
        assert "apt-get" not in done.stderr


def test_without_the_process_runtime_a_user_gets_the_one_apt_command(shared_dir):
    bin_dir = _fake_dpkg(shared_dir, {"bubblewrap", "nftables"})
    done = _as_a_user(["sysdeps", "run"], bin_dir, shared_dir, NBCLOUD_RUNTIME="docker")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert "    sudo apt-get install -y python3-venv iproute2 openssh-sftp-server" in lines
    assert sum("apt-get" in line for line in lines) == 1
    assert "run again" in done.stderr


def test_the_test_packages_come_only_with_make_test(shared_dir):
    run_packages = {"bubblewrap", "python3-venv", "iproute2", "nftables", "openssh-sftp-server"}
    bin_dir = _fake_dpkg(shared_dir, run_packages)
    docker = {"NBCLOUD_RUNTIME": "docker"}
    assert _as_a_user(["sysdeps", "run"], bin_dir, shared_dir, **docker).returncode == 0
    for_tests = _as_a_user(["sysdeps", "test"], bin_dir, shared_dir, **docker)
    assert for_tests.returncode == 2
    needed = (
        "    sudo apt-get install -y chromium openssh-client openssh-server git curl prometheus"
        " slurm-wlm slurmdbd munge"
    )
    assert needed in for_tests.stderr


@pytest.mark.skipif(
    not DEBIAN_PYTHON.exists() or not any(DEBIAN_WHEELS.glob("pip-*.whl")),
    reason="needs Debian's python3 with python3-venv (make sysdeps)",
)
def test_a_venv_without_pip_is_made_again(tmp_path):
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy(BOOTSTRAP, project / "scripts" / "bootstrap.sh")
    (project / "demo").mkdir()
    (project / "demo" / "__init__.py").write_text("READY = True\n")
    (project / "pyproject.toml").write_text(
        '[project]\nname = "demo"\nversion = "0"\n'
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
    )
    (project / "backend.py").write_text(IN_TREE_BACKEND)
    # What an interrupted run leaves: a .venv without pip.
    subprocess.run([DEBIAN_PYTHON, "-m", "venv", "--without-pip", project / ".venv"], check=True)
    env = {
        **os.environ,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(DEBIAN_WHEELS),
    }
    argv = ["bash", "scripts/bootstrap.sh", "venv", str(DEBIAN_PYTHON), "run"]
    done = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "==> .venv is incomplete (no working python or pip): creating it again" in done.stdout
    assert "==> installing the project into .venv" in done.stdout
    venv_python = project / ".venv" / "bin" / "python"
    check = subprocess.run(
        [venv_python, "-c", "import pip, demo; print(demo.READY)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert check.stdout.strip() == "True", check.stderr

    again = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout == "", again.stdout + again.stderr

    # Made from the interpreter asked for (Debian's own by default).
    cfg = project / ".venv" / "pyvenv.cfg"
    assert "home = /usr/bin" in cfg.read_text()


def _readme_block(name: str) -> str:
    done = subprocess.run(
        ["bash", str(ROOT / ".ci" / "fresh-machine.sh"), "--block", name],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_readme_blocks_ci_runs_are_there_and_say_what_make_does():
    """CI runs the README's marked blocks as written: they must exist, and the
    packages the README names must be those `make run` installs."""
    prerequisites = _readme_block("prerequisites")
    assert "apt-get install -y python3 git make ca-certificates curl" in prerequisites
    try_it = _readme_block("try")
    assert "createapitoken" in try_it and "curl" in try_it and "${PORT:-8000}" in try_it
    restart = _readme_block("restart")
    assert "nbc notebook stop demo --wait" in restart and "nbc notebook start demo" in restart
    script = BOOTSTRAP.read_text()
    run_packages = next(
        line.split('"')[1] for line in script.splitlines() if line.startswith("RUN_PACKAGES=")
    )
    assert f"`{run_packages}`" in " ".join((ROOT / "README.md").read_text().split())


def test_make_builds_the_venv_from_debians_python_by_default():
    done = subprocess.run(
        ["make", "-n", "install"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert "scripts/bootstrap.sh venv /usr/bin/python3 run" in done.stdout
