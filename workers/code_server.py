"""Install code-server (the open-source VS Code server) once per host.

`ensure_code_server()` installs code-server CODE_SERVER_VERSION with npm into
`NBCLOUD_CODE_SERVER_DIR` (default `/var/lib/nbcloud/code-server`: outside the
checkout, readable by the unprivileged sandbox users) and returns the script to
run; it is a no-op when that version is already there. It runs as a host's
provisioning step, `manage.py installcodeserver` (`make code-server`), never
during a notebook's start: a vscode notebook on a host without it fails to
start at once, naming that command (workers/runtimes/editors.py).

What an npm install of code-server needs, found on Debian 12 with Node.js 20:
- Node.js 20 (code-server's postinstall refuses any other major version) and npm;
- Debian's build-essential, pkg-config, libkrb5-dev, libxkbfile-dev and
  libsecret-1-dev (native modules are compiled), installed here when running
  as root and missing (with an `apt-get update` when the first try fails);
- `--unsafe-perm` (its postinstall refuses to run as root without it) and
  `npm_config_yes=true`;
- a ripgrep binary: @vscode/ripgrep's postinstall downloads one from GitHub,
  which hosts may not reach. It first looks in its download cache,
  `os.tmpdir()/vscode-ripgrep-cache-<its npm version>/ripgrep-<release>-<target>.tar.gz`
  (lib/download.js), and os.tmpdir() honours TMPDIR: the install runs with a
  private TMPDIR whose cache holds Debian's `rg` (package ripgrep) in that archive.

The install happens in a temporary sibling folder renamed into place at the end,
so a failed install leaves nothing half-made; the marker, written last, holds
the version. Installs are serialised with a lock file.
"""

import io
import json
import os
import platform
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from django.conf import settings

from .environments import (
    _locked,
    _make_parents,
    _make_world_readable,
    _remove_leftovers,
    _swap_into_place,
)

CODE_SERVER_VERSION = "4.100.3"
NODE_MAJOR = 20  # what code-server 4.100.3 requires (its package.json "engines")
# @vscode/ripgrep as pinned by code-server 4.100.3's lib/vscode/npm-shrinkwrap.json,
# and the ripgrep-prebuilt release its postinstall.js asks for.
RIPGREP_NPM_VERSION = "1.15.11"
RIPGREP_RELEASE = "v13.0.0-10"
RIPGREP_MULTI_ARCH_RELEASE = "v13.0.0-4"
DEBIAN_PACKAGES = (
    "build-essential",
    "pkg-config",
    "libkrb5-dev",
    "libxkbfile-dev",
    "libsecret-1-dev",
    "ripgrep",
)
MARKER = ".nbcloud-code-server"
TAIL_LINES = 40
# Loaded into code-server with `node --require`: serves it under the notebook's
# base path (see PRELOAD_SOURCE).
PRELOAD = "nbcloud-base-path.js"

# code-server serves from "/" and uses relative URLs, so it expects a proxy
# that strips the path it is published under; the gateway forwards the full
# /notebooks/<id>/... path. This strips NBCLOUD_BASE_PATH from every request
# and websocket upgrade before code-server sees it (code-server forks its
# server process with the same node options, so it applies there too).
PRELOAD_SOURCE = r"""// nbcloud: serve code-server under $NBCLOUD_BASE_PATH (written by workers/code_server.py).
"use strict";
const http = require("http");
const base = (process.env.NBCLOUD_BASE_PATH || "/").replace(/\/*$/, "/");
if (base !== "/") {
  const bare = base.slice(0, -1);
  const emit = http.Server.prototype.emit;
  http.Server.prototype.emit = function (event, req, res, ...rest) {
    if ((event === "request" || event === "upgrade") && req && typeof req.url === "string") {
      const q = req.url.indexOf("?");
      const path = q < 0 ? req.url : req.url.slice(0, q);
      const query = q < 0 ? "" : req.url.slice(q);
      if (path === bare && event === "request") {
        res.writeHead(302, { Location: base + query });
        res.end();
        return true;
      }
      if (path.startsWith(base)) {
        req.url = req.url.slice(base.length - 1);
      }
    }
    return emit.call(this, event, req, res, ...rest);
  };
}
"""


class CodeServerInstallError(RuntimeError):
    """code-server could not be installed; the message names what failed."""


def install_dir() -> Path:
    return Path(settings.NBCLOUD_CODE_SERVER_DIR)


def entry_script(folder: Path | None = None) -> Path:
    """code-server's executable script (its package.json "bin")."""
    folder = folder or install_dir()
    return folder / "node_modules" / "code-server" / "out" / "node" / "entry.js"


def preload_script(folder: Path | None = None) -> Path:
    return (folder or install_dir()) / PRELOAD


def installed_node(folder: Path | None = None) -> str | None:
    """The node that built the install (native modules are built for its ABI)."""
    info = _marker(folder or install_dir())
    return info.get("node") if info else None


def is_installed(folder: Path | None = None) -> bool:
    folder = folder or install_dir()
    info = _marker(folder)
    return bool(
        info
        and info.get("version") == CODE_SERVER_VERSION
        and entry_script(folder).is_file()
        and os.access(info.get("node", ""), os.X_OK)
    )


def ensure_code_server(log: Callable[[str], object] = print, *, force: bool = False) -> Path:
    """Install code-server unless it is there (or force); return its entry script."""
    target = install_dir()
    if not force and is_installed(target):
        _write_preload(target)
        return entry_script(target)

    _make_parents(target.parent, log)
    with _locked(target):
        if not force and is_installed(target):  # installed while we waited
            _write_preload(target)
            return entry_script(target)
        started = time.monotonic()
        _remove_leftovers(target)
        node, npm = check_node()
        _ensure_debian_packages(log)
        rg = shutil.which("rg") or "/usr/bin/rg"
        if not os.access(rg, os.X_OK):
            raise CodeServerInstallError(
                "installing code-server failed: no ripgrep binary (rg) on this host; "
                "install it with: apt-get install ripgrep"
            )
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".work"))
        try:
            _fill_ripgrep_cache(work, rg)
            log(f"code-server {CODE_SERVER_VERSION}: installing with npm into {target}")
            _run(
                [
                    npm,
                    "install",
                    "--prefix",
                    str(tmp),
                    "--no-audit",
                    "--no-fund",
                    "--no-update-notifier",
                    "--loglevel",
                    "warn",
                    f"code-server@{CODE_SERVER_VERSION}",
                ],
                _npm_env(node, work),
                log,
            )
            _check_complete(tmp)
            _check_runs(node, tmp, home=work)
            _write_preload(tmp)
            _make_world_readable(tmp)
            marker = tmp / MARKER
            marker.write_text(
                json.dumps(
                    {
                        "version": CODE_SERVER_VERSION,
                        "node": node,
                        "node_version": _node_version(node),
                        "seconds": round(time.monotonic() - started),
                    }
                )
                + "\n"
            )
            marker.chmod(0o644)
            _swap_into_place(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log(
        f"code-server {CODE_SERVER_VERSION}: installed in {target} "
        f"in {time.monotonic() - started:.0f} s"
    )
    return entry_script(target)


def _marker(folder: Path) -> dict | None:
    try:
        info = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _node_version(node: str) -> str:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise CodeServerInstallError(
            f"installing code-server failed: cannot run {node}: {exc}"
        ) from exc
    return out.stdout.strip()


def check_node() -> tuple[str, str]:
    """Node.js 20 and npm (real paths), or a CodeServerInstallError saying what is missing."""
    node = shutil.which("node") or shutil.which("nodejs")
    npm = shutil.which("npm")
    if not node or not npm:
        raise CodeServerInstallError(
            f"installing code-server failed: Node.js {NODE_MAJOR} and npm are needed and "
            f"{'node' if not node else 'npm'} is not on PATH"
        )
    node = os.path.realpath(node)
    version = _node_version(node)
    match = re.match(r"v(\d+)\.", version)
    if not match or int(match[1]) != NODE_MAJOR:
        raise CodeServerInstallError(
            f"installing code-server failed: code-server {CODE_SERVER_VERSION} needs "
            f"Node.js {NODE_MAJOR}, and {node} is {version or 'unknown'}"
        )
    return node, npm


def _missing_debian_packages() -> list[str]:
    if not shutil.which("dpkg-query"):
        return []  # not Debian: let npm say what is missing
    missing = []
    for package in DEBIAN_PACKAGES:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
        )
        if out.returncode != 0 or "install ok installed" not in out.stdout:
            missing.append(package)
    return missing


def _ensure_debian_packages(log: Callable[[str], object]) -> None:
    missing = _missing_debian_packages()
    if not missing:
        return
    command = f"apt-get install -y {' '.join(missing)}"
    if os.geteuid() != 0:
        raise CodeServerInstallError(
            f"installing code-server needs the Debian packages {', '.join(missing)}; "
            f"run as root: {command}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    log(f"code-server: installing Debian packages {' '.join(missing)}")
    if subprocess.run(install, capture_output=True, text=True, env=env).returncode == 0:
        return
    update = subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env)
    retry = subprocess.run(install, capture_output=True, text=True, env=env)
    if retry.returncode != 0:
        detail = (retry.stderr or retry.stdout or update.stderr).strip()[-2000:]
        raise CodeServerInstallError(
            f"installing code-server failed: `{command}` exited with status "
            f"{retry.returncode}:\n{detail}"
        )


def _ripgrep_target() -> str:
    """The ripgrep-prebuilt target @vscode/ripgrep asks for on this machine (linux)."""
    arch = platform.machine()
    return {
        "x86_64": "x86_64-unknown-linux-musl",
        "aarch64": "aarch64-unknown-linux-musl",
        "arm64": "aarch64-unknown-linux-musl",
        "armv7l": "arm-unknown-linux-gnueabihf",
        "ppc64le": "powerpc64le-unknown-linux-gnu",
        "s390x": "s390x-unknown-linux-gnu",
    }.get(arch, "i686-unknown-linux-musl")


def _fill_ripgrep_cache(tmpdir: Path, rg: str) -> None:
    """Put `rg` where @vscode/ripgrep's postinstall looks before downloading."""
    target = _ripgrep_target()
    multi_arch = {
        "arm-unknown-linux-gnueabihf",
        "powerpc64le-unknown-linux-gnu",
        "s390x-unknown-linux-gnu",
    }
    release = RIPGREP_MULTI_ARCH_RELEASE if target in multi_arch else RIPGREP_RELEASE
    cache = tmpdir / f"vscode-ripgrep-cache-{RIPGREP_NPM_VERSION}"
    cache.mkdir(parents=True, exist_ok=True)
    data = Path(rg).read_bytes()
    with tarfile.open(cache / f"ripgrep-{release}-{target}.tar.gz", "w:gz") as archive:
        info = tarfile.TarInfo("rg")
        info.size = len(data)
        info.mode = 0o755
        info.mtime = int(time.time())
        archive.addfile(info, io.BytesIO(data))


def _npm_env(node: str, tmpdir: Path) -> dict[str, str]:
    scrubbed = ("NODE_OPTIONS", "npm_config_prefix", "NPM_CONFIG_PREFIX", "PREFIX")
    env = {k: v for k, v in os.environ.items() if k not in scrubbed}
    env.update(
        {
            "TMPDIR": str(tmpdir),  # where the ripgrep cache is (os.tmpdir())
            "npm_config_yes": "true",
            # code-server's postinstall checks this when run as root (--unsafe-perm).
            "npm_config_unsafe_perm": "true",
            "npm_config_update_notifier": "false",
            "DEBIAN_FRONTEND": "noninteractive",
            "PATH": f"{Path(node).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        }
    )
    # node-gyp: build against this node's own headers rather than downloading
    # them from nodejs.org.
    node_prefix = Path(node).resolve().parent.parent
    if (node_prefix / "include" / "node" / "common.gypi").is_file():
        env["npm_config_nodedir"] = str(node_prefix)
    return env


def _run(argv: list[str], env: dict[str, str], log: Callable[[str], object]) -> None:
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=env,
            umask=0o022,  # readable by the sandbox users
        )
    except OSError as exc:
        raise CodeServerInstallError(
            f"installing code-server failed: cannot run {argv[0]}: {exc}"
        ) from exc
    with proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            log(f"  {line}")
    if proc.returncode != 0:
        raise CodeServerInstallError(
            f"installing code-server failed: `npm install code-server@{CODE_SERVER_VERSION}` "
            f"exited with status {proc.returncode}. Last output:\n" + "\n".join(tail)
        )


def _check_complete(folder: Path) -> None:
    """What code-server's postinstall makes is there (npm may skip install scripts)."""
    vscode = folder / "node_modules" / "code-server" / "lib" / "vscode"
    for needed, what in (
        (entry_script(folder), "npm finished but"),
        (vscode / "node_modules" / "@vscode" / "ripgrep" / "bin" / "rg", "its postinstall"),
        (
            vscode / "node_modules" / "node-pty" / "build" / "Release" / "pty.node",
            "its postinstall",
        ),
    ):
        if not needed.exists():
            raise CodeServerInstallError(
                f"installing code-server failed: {what} did not make {needed} (were npm's "
                "install scripts skipped? see `npm config get strict-allow-scripts`)"
            )


def _check_runs(node: str, folder: Path, home: Path) -> None:
    out = subprocess.run(
        [node, str(entry_script(folder)), "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)},
    )
    if out.returncode != 0 or CODE_SERVER_VERSION not in out.stdout:
        raise CodeServerInstallError(
            f"installing code-server failed: the installed `code-server --version` answered "
            f"status {out.returncode}: {(out.stdout + out.stderr).strip()[-1000:]}"
        )


def write_preload(folder: Path | None = None) -> Path:
    """The base-path preload, (re)written when missing or out of date; its path."""
    folder = folder or install_dir()
    if not folder.exists():
        _make_parents(folder, lambda _: None)
    _write_preload(folder)
    return preload_script(folder)


def _write_preload(folder: Path) -> None:
    """Write the base-path preload when it is missing or out of date (atomically)."""
    path = preload_script(folder)
    try:
        if path.read_text() == PRELOAD_SOURCE:
            return
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=f".{PRELOAD}.", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(PRELOAD_SOURCE)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
