"""Build the virtualenvs the process runtime runs editors from.

One venv per framework version, at `NBCLOUD_ENVS_DIR/<framework>-<version>`, made with
Debian's `/usr/bin/python3 -m venv --system-site-packages` (the default python3 may
live under /root, mode 0700, which the unprivileged sandbox users cannot run; system
site packages keep the user site visible, so `pip install` in a notebook lands in the
workspace) and holding the framework's requirements plus those of its editors.

A build happens in a temporary sibling folder that is renamed into place at the end,
so a failed build leaves nothing half-made. The marker file, written last, holds the
sha256 of what was installed: a changed requirement list means a rebuild. Builds of
one environment are serialised with a lock file, so concurrent callers build it once.
Beside it, `.nbcloud-build.json` records how long the build took (`make verify-envs`
reports it).

An environment whose manifest says `conda: true` also gets micromamba, a real conda
package manager, from `NBCLOUD_CONDA_INSTALLER` (a URL or a local file: the executable,
or the official tar.bz2 holding `bin/micromamba`); none can be downloaded on hosts that
reach no conda site, so without that setting the environment is built with pip only
and the build says so. `bin/micromamba` runs it with the channels of
`NBCLOUD_CONDA_CHANNELS` and its root prefix under `$HOME` (the notebook's workspace),
so what a user installs with it survives stop/start like a pip install does.
"""

import fcntl
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

from nbcloud.catalog.services import Framework, FrameworkVersion, catalog

MARKER = ".nbcloud-built"
BUILD_INFO = ".nbcloud-build.json"
ELF_MAGIC = b"\x7fELF"
CONDA_FETCH_TIMEOUT = 120
PIP_TAIL_LINES = 30
# Variables of the caller that would send pip elsewhere than into the new venv.
_SCRUBBED_ENV = (
    "PIP_USER",
    "PIP_TARGET",
    "PIP_PREFIX",
    "PYTHONHOME",
    "PYTHONPATH",
    "PYTHONUSERBASE",
    "VIRTUAL_ENV",
)


class EnvironmentBuildError(RuntimeError):
    """An environment could not be built (unknown, no usable Python, pip failed)."""


def env_dir(framework_id: str, version: str) -> Path:
    return Path(settings.NBCLOUD_ENVS_DIR) / f"{framework_id}-{version}"


def resolve(framework_id: str, version: str | None = None) -> tuple[Framework, FrameworkVersion]:
    """The catalogue's framework and version (its default one when version is empty)."""
    frameworks = catalog().frameworks
    framework = frameworks.get(framework_id)
    if framework is None:
        raise EnvironmentBuildError(
            f"unknown framework {framework_id!r}; choose from {', '.join(sorted(frameworks))}"
        )
    found = framework.get_version(version)
    if found is None:
        raise EnvironmentBuildError(
            f"framework {framework_id} has no version {version!r}; choose from "
            f"{', '.join(v.version for v in framework.versions)}"
        )
    return framework, found


def requirements(framework_id: str, version: str | None = None) -> tuple[str, ...]:
    """The version's requirements, then those of every editor the framework lists."""
    framework, found = resolve(framework_id, version)
    editors = catalog().editors
    reqs = [*found.requirements]
    for editor_id in framework.editors:
        reqs.extend(editors[editor_id].requirements)
    return tuple(dict.fromkeys(reqs))


def _python() -> str:
    return str(settings.NBCLOUD_ENV_PYTHON)


def conda_source(framework: Framework) -> list | None:
    """What micromamba comes from for framework (installer, channels), or None."""
    if not framework.conda:
        return None
    return [settings.NBCLOUD_CONDA_INSTALLER, _channels()]


def _digest(framework: Framework, reqs: tuple[str, ...]) -> str:
    what: dict = {"python": _python(), "requirements": list(reqs)}
    conda = conda_source(framework)
    if conda is not None:
        what["conda"] = conda
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()


def build_digest(framework_id: str, version: str) -> str:
    """What the marker of the environment holds once it is built as the catalogue says."""
    framework, found = resolve(framework_id, version)
    return _digest(framework, requirements(framework.id, found.version))


def _marker_matches(path: Path, digest: str) -> bool:
    try:
        return (path / MARKER).read_text().strip() == digest
    except OSError:
        return False


def is_built(framework_id: str, version: str) -> bool:
    """Whether the environment is built with the catalogue's current requirements."""
    try:
        framework, found = resolve(framework_id, version)
        digest = _digest(framework, requirements(framework_id, version))
    except EnvironmentBuildError:
        return False
    return _marker_matches(env_dir(framework.id, found.version), digest)


def build(
    framework_id: str,
    version: str | None = None,
    *,
    force: bool = False,
    log: Callable[[str], object] = print,
) -> Path:
    """Build the environment unless it is up to date (or force); return its folder."""
    framework, found = resolve(framework_id, version)
    name = f"{framework.id}-{found.version}"
    target = env_dir(framework.id, found.version)
    reqs = requirements(framework.id, found.version)
    digest = _digest(framework, reqs)
    if not force and _marker_matches(target, digest):
        log(f"{name}: up to date in {target}")
        return target

    _make_parents(target.parent, log)
    with _locked(target):
        if not force and _marker_matches(target, digest):  # built while we waited
            log(f"{name}: up to date in {target}")
            return target
        _remove_leftovers(target)
        python = _check_python(name)
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            log(f"{name}: creating a virtualenv with {python}")
            _run(
                name,
                [python, "-m", "venv", "--system-site-packages", str(tmp)],
                log,
                hint="is python3-venv installed? (apt-get install python3-venv)",
            )
            if reqs:
                log(f"{name}: installing {len(reqs)} requirements")
                _run(
                    name,
                    [
                        str(tmp / "bin" / "python"),
                        "-m",
                        "pip",
                        "install",
                        "--no-input",
                        "--disable-pip-version-check",
                        "--progress-bar",
                        "off",
                        *reqs,
                    ],
                    log,
                )
            if framework.conda:
                install_micromamba(name, tmp, target, log)
            _relocate(tmp, target)
            _make_world_readable(tmp)
            info = {
                "seconds": round(time.monotonic() - started, 1),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "requirements": list(reqs),
            }
            for path, text in ((tmp / BUILD_INFO, json.dumps(info)), (tmp / MARKER, digest)):
                path.write_text(text + "\n")
                path.chmod(0o644)
            _swap_into_place(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log(f"{name}: built in {target}")
    return target


def build_info(framework_id: str, version: str) -> dict:
    """What the last build of the environment recorded (seconds, built_at), or {}."""
    try:
        return json.loads((env_dir(framework_id, version) / BUILD_INFO).read_text())
    except (OSError, ValueError):
        return {}


def disk_usage(path: Path) -> int:
    """Bytes the tree takes on disk (allocated blocks; links are not followed)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for entry in (*dirnames, *filenames):
            total += os.lstat(os.path.join(dirpath, entry)).st_blocks * 512
    return total


def _channels() -> list[str]:
    return [c.strip() for c in settings.NBCLOUD_CONDA_CHANNELS.split(",") if c.strip()]


def install_micromamba(name: str, prefix: Path, target: Path, log: Callable[[str], object]) -> None:
    """Put micromamba from NBCLOUD_CONDA_INSTALLER into prefix, to run from target.

    prefix is the folder being built (a venv, or the files an image copies over its
    venv); target is where it will live when it runs, which the launcher names.
    """
    source = settings.NBCLOUD_CONDA_INSTALLER
    if not source:
        log(
            f"{name}: no conda installer (NBCLOUD_CONDA_INSTALLER is empty): built with pip "
            "only. Set it to micromamba's URL or a local copy of it to add micromamba."
        )
        return
    log(f"{name}: installing micromamba from {source}")
    binary = _micromamba_executable(source, _fetch(source))
    libexec = prefix / "libexec"
    libexec.mkdir(exist_ok=True)
    real = libexec / "micromamba"
    real.write_bytes(binary)
    real.chmod(0o755)
    probe = subprocess.run(
        [str(real), "--version"], capture_output=True, text=True, timeout=60, env=_env()
    )
    if probe.returncode != 0 or not probe.stdout.strip():
        raise EnvironmentBuildError(
            f"building environment {name} failed: the micromamba from "
            f"NBCLOUD_CONDA_INSTALLER={source} does not run here (`micromamba --version` "
            f"exited with status {probe.returncode}: {probe.stderr.strip()[-300:]}); point it "
            "at micromamba for linux-64"
        )
    log(f"{name}: micromamba {probe.stdout.strip()}")
    condarc = prefix / "etc" / "conda" / "condarc"
    condarc.parent.mkdir(parents=True, exist_ok=True)
    channels = "".join(f"  - {c}\n" for c in _channels())
    condarc.write_text(f"channels:\n{channels}channel_priority: strict\n")
    wrapper = prefix / "bin" / "micromamba"
    wrapper.parent.mkdir(exist_ok=True)
    # The root prefix (environments, package cache) under $HOME, the notebook's
    # workspace; the user's own ~/.condarc still applies after the platform's.
    wrapper.write_text(
        "#!/bin/sh\n"
        ': "${MAMBA_ROOT_PREFIX:=$HOME/.micromamba}"\n'
        f': "${{CONDARC:={target}/etc/conda/condarc}}"\n'
        "export MAMBA_ROOT_PREFIX CONDARC\n"
        f'exec {target}/libexec/micromamba "$@"\n'
    )
    wrapper.chmod(0o755)


def _fetch(source: str) -> bytes:
    """The bytes at source: an http(s) URL, a file:// URL or a local path."""
    try:
        if source.startswith(("http://", "https://", "file://")):
            with urllib.request.urlopen(source, timeout=CONDA_FETCH_TIMEOUT) as reply:
                return reply.read()
        return Path(source).read_bytes()
    except (OSError, ValueError) as exc:
        raise EnvironmentBuildError(
            f"NBCLOUD_CONDA_INSTALLER={source}: cannot read it ({exc}); give micromamba's "
            "URL or the path of a local copy"
        ) from exc


def _micromamba_executable(source: str, data: bytes) -> bytes:
    """The micromamba executable: data itself, or bin/micromamba inside a tar archive."""
    if data.startswith(ELF_MAGIC):
        return data
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            for member in archive.getmembers():
                if member.isfile() and member.name.lstrip("./") == "bin/micromamba":
                    extracted = archive.extractfile(member)
                    if extracted is not None:
                        binary = extracted.read()
                        if binary.startswith(ELF_MAGIC):
                            return binary
    except tarfile.TarError:
        pass
    raise EnvironmentBuildError(
        f"NBCLOUD_CONDA_INSTALLER={source}: neither a micromamba executable nor an archive "
        "holding bin/micromamba; give micromamba for linux-64 (the executable, or the "
        "tar.bz2 that micromamba's own site serves)"
    )


def _check_python(name: str) -> str:
    python = _python()
    if not os.access(python, os.X_OK):
        raise EnvironmentBuildError(
            f"cannot build {name}: {python} does not exist. Install Debian's Python with its "
            "venv module (apt-get install python3-venv), or point NBCLOUD_ENV_PYTHON at a "
            "Python that the sandbox users can run."
        )
    probe = subprocess.run(
        [python, "-c", "import venv, ensurepip"], capture_output=True, text=True, env=_env()
    )
    if probe.returncode != 0:
        raise EnvironmentBuildError(
            f"cannot build {name}: {python} has no working venv module "
            f"(apt-get install python3-venv): {probe.stderr.strip()}"
        )
    return python


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(name: str, argv: list[str], log: Callable[[str], object], hint: str = "") -> None:
    """Run argv, streaming its output to log; fail with the output's tail."""
    tail: deque[str] = deque(maxlen=PIP_TAIL_LINES)
    # umask 022: everything pip writes must be readable by the sandbox users.
    with subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        env=_env(),
        umask=0o022,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            log(f"  {line}")
    if proc.returncode != 0:
        what = " ".join([Path(argv[0]).name, *argv[1:4]])
        raise EnvironmentBuildError(
            f"building environment {name} failed: `{what}` exited with status "
            f"{proc.returncode}{'; ' + hint if hint else ''}. Last output:\n" + "\n".join(tail)
        )


def _make_parents(folder: Path, log: Callable[[str], object]) -> None:
    """Create the missing parents, traversable by everyone (mode 755)."""
    missing = []
    for parent in (folder, *folder.parents):
        if parent.exists():
            break
        missing.append(parent)
    for parent in reversed(missing):
        parent.mkdir(exist_ok=True)
        parent.chmod(0o755)
    for parent in (folder, *folder.parents):
        if parent.stat().st_mode & 0o005 != 0o005:
            log(
                f"warning: {parent} is not readable by other users; the sandboxed "
                "editors will not be able to run environments under it"
            )
            break


@contextmanager
def _locked(target: Path) -> Iterator[None]:
    lock_path = target.parent / f".{target.name}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remove_leftovers(target: Path) -> None:
    """Remove what an interrupted build left (we hold the lock: nobody else builds)."""
    for pattern in (f".{target.name}.*.tmp", f".{target.name}.*.old"):
        for leftover in target.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def _relocate(tmp: Path, target: Path) -> None:
    """Point the scripts made in tmp (shebangs, activate, pyvenv.cfg) at target."""
    old, new = str(tmp).encode(), str(target).encode()
    for path in [*(tmp / "bin").iterdir(), tmp / "pyvenv.cfg"]:
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if old in data and b"\0" not in data:
            mode = path.stat().st_mode
            path.write_bytes(data.replace(old, new))
            path.chmod(mode)


def _make_world_readable(root: Path) -> None:
    """Add read (and traverse/execute where the owner has it) permission for everyone."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            wanted = st.st_mode | 0o444
            if st.st_mode & 0o100:
                wanted |= 0o111
            if wanted != st.st_mode:
                os.chmod(path, wanted & 0o7777)
    root.chmod(0o755)


def _swap_into_place(tmp: Path, target: Path) -> None:
    if not (target.exists() or target.is_symlink()):
        tmp.rename(target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    old.rmdir()
    target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
