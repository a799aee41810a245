"""`manage.py runplatform` (what `make run` starts): ports, the public URL, Ctrl-C.

Each test runs the real command in a data directory of its own (SQLite and the
embedded broker there), never the suite's database or broker.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from nbcloud.hosts.management.commands.runplatform import free_port
from support.paths import ROOT
from support.waiting import wait_for

SPEC = {
    "name": "adopted",
    "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
    "resources": {"cpu": 1},
}


def _env(data_dir: Path, **extra) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        # This run's own database and broker, in data_dir.
        if key not in ("DATABASE_URL", "CELERY_BROKER_URL", "NBCLOUD_PUBLIC_URL", "PORT")
        and not key.startswith("NBCLOUD_FLOWER")
        and not key.startswith("NBCLOUD_WORKER_METRICS")
        and not key.startswith("NBCLOUD_SSH")
    }
    env.update(
        PYTHONPATH=f"{ROOT / 'platform'}:{ROOT}",
        DJANGO_SETTINGS_MODULE="nbcloud.settings",
        NBCLOUD_DATA_DIR=str(data_dir),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def _manage(data_dir: Path, *argv: str, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *argv],
        cwd=ROOT,
        env=_env(data_dir, **extra),
        capture_output=True,
        text=True,
        timeout=180,
    )


def _listener(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def _settings(**env) -> dict:
    code = (
        "import json, django; django.setup(); from django.conf import settings as s; "
        "print(json.dumps({'port': s.PORT, 'url': s.NBCLOUD_PUBLIC_URL}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**_env(Path(os.environ.get("NBCLOUD_DATA_DIR", "var/test")).resolve()), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(done.stdout) if done.returncode == 0 else {"stderr": done.stderr}


def test_the_public_url_follows_port_unless_set():
    assert _settings() == {"port": 8000, "url": "http://127.0.0.1:8000"}
    assert _settings(PORT="8123") == {"port": 8123, "url": "http://127.0.0.1:8123"}
    assert _settings(PORT="8123", NBCLOUD_PUBLIC_URL="https://nb.example.org/")["url"] == (
        "https://nb.example.org"
    )
    refused = _settings(PORT="99999")["stderr"].strip().splitlines()[-1]
    assert "ImproperlyConfigured" in refused and "PORT=99999" in refused


def test_a_taken_web_port_is_reported_with_the_variable_to_change(tmp_path):
    data = tmp_path / "data"
    with _listener() as taken:
        port = taken.getsockname()[1]
        done = _manage(data, "runplatform", "--no-beat", PORT=str(port))
    assert done.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr
    assert "PORT=" in done.stderr and "make run" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (data / "redis.sock").exists()  # nothing was started
    # Its data directory made first, as `manage.py setup` makes it.
    assert (data / "secret_key").is_file()


def test_a_taken_explicit_flower_port_is_reported(tmp_path):
    with _listener() as taken:
        flower = taken.getsockname()[1]
        done = _manage(
            tmp_path,
            "runplatform",
            "--port",
            str(free_port()),
            NBCLOUD_FLOWER_PORT=str(flower),
        )
    assert done.returncode == 1
    assert f"port {flower} on 127.0.0.1 (NBCLOUD_FLOWER_PORT) is already in use" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


class Platform:
    """One `runplatform` in the foreground of its own process group, as in a
    terminal: interrupt() is the Ctrl-C a user types."""

    def __init__(self, data_dir: Path, port: int, **env):
        self.log = (data_dir / f"runplatform-{time.monotonic_ns()}.log").open("w+")
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "runplatform"],
            cwd=ROOT,
            env=_env(
                data_dir,
                PORT=str(port),
                NBCLOUD_RECONCILE_INTERVAL="2",
                # Not the uids and addresses of the suite's own platform, whose
                # notebooks may run on this host at the same time.
                NBCLOUD_SANDBOX_UID_BASE="2200000000",
                NBCLOUD_SANDBOX_UID_COUNT="60000",
                NBCLOUD_NOTEBOOK_ADDRESSES="100.126.0.0/16",
                **env,
            ),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        self.url = f"http://127.0.0.1:{port}"
        wait_for(self._serving, timeout=90, what=f"runplatform on {self.url}")

    def _serving(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"runplatform ended:\n{self.output()}")
        try:
            return httpx.get(f"{self.url}/api/v1/schema/", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def interrupt(self) -> int:
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise


@pytest.mark.e2e
def test_port_url_and_ctrl_c_leave_notebooks_for_the_next_start(tmp_path, conda_env):
    """On a second port with Flower's default taken: the platform starts, its
    URLs say its port; Ctrl-C stops the platform and not the notebook, which the
    next start takes over; stopping it then saves its workspace."""
    data = tmp_path / "data"
    # As `make run`: setup, migrate, then runplatform.
    assert _manage(data, "setup", "-v", "0").returncode == 0
    assert _manage(data, "migrate", "--noinput", "-v", "0").returncode == 0
    made = _manage(data, "createapitoken", "alice", "--project", "demo")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    auth = {"Authorization": f"Bearer {token}"}
    port = free_port()
    flower_default = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        flower_default.bind(("127.0.0.1", 5555))
        flower_default.listen()
    except OSError:
        flower_default.close()  # someone else holds it, which is the same test
    platform = Platform(data, port)
    try:
        banner = platform.output()
        assert "port 5555 (flower) is taken" in banner
        assert f"API     http://127.0.0.1:{port}/api/v1/" in banner
        assert f"Console http://127.0.0.1:{port}/ " in banner
        assert "SSH     127.0.0.1:" in banner  # the SSH gateway is one of the children
        api = f"{platform.url}/api/v1/projects/demo/notebooks/"
        created = httpx.post(api, json=SPEC, headers=auth, timeout=30)
        assert created.status_code == 201, created.text
        notebook = created.json()
        nb_url = f"{api}{notebook['id']}/"

        def state(wanted):
            status = httpx.get(nb_url, headers=auth, timeout=10).json()["status"]
            assert status["state"] != "FAILED", f"{status}\n{platform.output()[-6000:]}"
            return status if status["state"] == wanted else None

        running = wait_for(lambda: state("RUNNING"), timeout=180, what="RUNNING")
        url = urlsplit(running["url"])
        assert url.port == port and notebook["id"] in running["url"], running["url"]

        def editor(path: str, **headers) -> httpx.Response:
            # On loopback, with the URL's host name (a per-notebook one needs no DNS).
            return httpx.get(
                f"http://127.0.0.1:{port}{url.path}{path}",
                headers={"Host": url.netloc, **headers},
                timeout=30,
            )

        login = editor("", Accept="text/html")
        assert login.status_code == 302
        location = urlsplit(login.headers["location"])
        # To the platform (its public URL, on PORT) to sign in or hand off.
        assert (location.hostname, location.port) == ("127.0.0.1", port), location
        assert location.path in ("/gateway/login/", "/gateway/handoff/"), location

        assert platform.interrupt() == 130, platform.output()  # as after Ctrl-C
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{platform.url}/api/v1/schema/", timeout=2)

        platform = Platform(data, port)
        time.sleep(5)  # more than two reconcile sweeps of the new worker
        again = wait_for(lambda: state("RUNNING"), timeout=30, what="RUNNING")
        assert again["last_started_at"] == running["last_started_at"]  # not restarted
        kernels = editor("api/kernelspecs", **auth)
        assert kernels.status_code == 200, kernels.text  # the same editor, adopted

        assert httpx.post(f"{nb_url}stop/", headers=auth, timeout=30).status_code == 202
        stopped = wait_for(lambda: state("STOPPED"), timeout=120, what="STOPPED")
        assert stopped["workspace_size"] is not None
        assert platform.interrupt() == 130, platform.output()  # as after Ctrl-C
    finally:
        if platform.proc.poll() is None:
            # The whole tree: web, worker, beat, Flower and editors may sit in
            # groups of their own.
            import contextlib

            import psutil

            for child in psutil.Process(platform.proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.kill()
            os.killpg(platform.proc.pid, signal.SIGKILL)
        flower_default.close()
