"""The platform as `make run` runs it, driven through its API, for the check scripts
(scripts/verify_envs.py, scripts/gpu_check.py): start runplatform in a data directory
of its own, create a notebook over HTTP, run code in its kernel through the gateway,
stop and delete it.

The platform runs on its embedded default (SQLite, the embedded broker, the process
runtime unless NBCLOUD_RUNTIME says docker); DATABASE_URL and CELERY_BROKER_URL of the
caller are left out so a check never touches a test or production database.
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "checks"


class CheckError(RuntimeError):
    """The platform did not do what a check asked; the message says what it answered."""


@dataclass(frozen=True)
class Platform:
    api: str  # the project's notebooks collection
    headers: dict
    data_dir: Path
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise CheckError(f"timed out after {timeout:.0f} s waiting for {what}")


def _answers(url: str, headers: dict) -> bool:
    try:
        return requests.get(url, headers=headers, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def resolve_localhost_subdomains() -> None:
    """Resolve `*.localhost` to loopback in this process, as browsers and curl do (RFC
    6761): each notebook's origin is `<id>.localhost:<port>` on the embedded default."""
    real = socket.getaddrinfo
    if getattr(real, "localhost_subdomains", False):
        return

    def getaddrinfo(host, *args, **kwargs):
        if isinstance(host, bytes):
            host = host.decode()
        if isinstance(host, str) and host.lower().rstrip(".").endswith(".localhost"):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    getaddrinfo.localhost_subdomains = True
    socket.getaddrinfo = getaddrinfo


def platform_env(data_dir: Path, **overrides: str) -> dict[str, str]:
    # Ports of their own: another platform on this machine (a developer's, a test's)
    # must not stop this one.
    ports = {"NBCLOUD_SSH_PORT": str(free_port()), "NBCLOUD_WORKER_METRICS_PORT": "0"}
    env = {**os.environ, **ports, "NBCLOUD_DATA_DIR": str(data_dir), **overrides}
    env.pop("CELERY_BROKER_URL", None)
    env.pop("DATABASE_URL", None)
    # The caller's own path stays behind the project's (on a machine whose packages
    # come from a bundle, scripts/device_gpu_check.sh, that is where Django is).
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "platform"), str(ROOT), *inherited])
    return env


def manage(data_dir: Path, *argv: str, **run) -> subprocess.CompletedProcess:
    """`manage.py argv` on data_dir (made, with its secret key, when missing)."""
    env = platform_env(data_dir)
    command = [sys.executable, str(ROOT / "manage.py")]
    if not (data_dir / "secret_key").exists():
        subprocess.run([*command, "setup", "-v0"], env=env, check=True, cwd=ROOT)
    return subprocess.run([*command, *argv], env=env, cwd=ROOT, **run)


@contextlib.contextmanager
def running_platform(data_dir: Path, **overrides: str) -> Iterator[Platform]:
    """runplatform in data_dir (emptied first), with an operator token for PROJECT."""
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    env = platform_env(data_dir, **overrides)
    manage = [sys.executable, str(ROOT / "manage.py")]
    for step in (["setup", "-v0"], ["migrate", "-v0"]):
        subprocess.run([*manage, *step], env=env, check=True, cwd=ROOT)
    token = subprocess.run(
        [*manage, "createapitoken", "checks", "--project", PROJECT],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout.strip()
    port = free_port()
    log = data_dir / "runplatform.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*manage, "runplatform", "--port", str(port), "--no-beat", "--no-flower"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    platform = Platform(
        api=f"http://127.0.0.1:{port}/api/v1/projects/{PROJECT}/notebooks/",
        headers={"Authorization": f"Bearer {token}"},
        data_dir=data_dir,
        log=log,
    )
    resolve_localhost_subdomains()
    try:
        wait_for(lambda: _answers(platform.api, platform.headers), 90, "the platform's API")
        yield platform
    finally:
        proc.terminate()
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def get(platform: Platform, notebook_id: str) -> dict:
    reply = requests.get(f"{platform.api}{notebook_id}/", headers=platform.headers, timeout=30)
    reply.raise_for_status()
    return reply.json()


def start_notebook(platform: Platform, spec: dict, timeout: float = 300) -> dict:
    """POST the notebook and wait until it is RUNNING; its body then."""
    reply = requests.post(platform.api, json=spec, headers=platform.headers, timeout=60)
    if reply.status_code != 201:
        raise CheckError(f"creating the notebook was refused: {reply.status_code} {reply.text}")
    notebook_id = reply.json()["id"]

    def running():
        body = get(platform, notebook_id)
        status = body["status"]
        if status["state"] == "FAILED":
            raise CheckError(f"notebook {notebook_id} FAILED: {json.dumps(status['info'])}")
        return body if status["state"] == "RUNNING" else None

    return wait_for(running, timeout, f"notebook {notebook_id} to be RUNNING")


def remove_notebook(platform: Platform, notebook_id: str, timeout: float = 300) -> None:
    """Stop (workspace backed up) and delete the notebook; best effort."""
    with contextlib.suppress(requests.RequestException, CheckError):
        requests.post(f"{platform.api}{notebook_id}/stop/", headers=platform.headers, timeout=60)
        wait_for(
            lambda: get(platform, notebook_id)["status"]["state"] in ("STOPPED", "FAILED"),
            timeout,
            f"notebook {notebook_id} to stop",
        )
        requests.delete(f"{platform.api}{notebook_id}/", headers=platform.headers, timeout=60)


def run_in_kernel(platform: Platform, notebook: dict, code: str, timeout: float = 600) -> str:
    """Run code in a new kernel of the notebook, reached through the gateway; its stdout."""
    if str(ROOT / "tests") not in sys.path:
        sys.path.append(str(ROOT / "tests"))
    from support.editors import Kernel

    kernel = Kernel(notebook["status"]["url"], platform.headers)
    try:
        kernel.ws.settimeout(timeout)  # a framework's first import can be slow
        return kernel.execute(code, timeout=timeout)
    finally:
        kernel.close()


def last_json_line(output: str) -> dict:
    """The last line of output that is a JSON object (what smoke programs print)."""
    for line in reversed(output.strip().splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    raise CheckError(f"no JSON result in the kernel's output: {output[-500:]!r}")
