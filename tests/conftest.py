"""Shared fixtures: the project's people (Alice, Bob, Charlie), their API
clients, and the real parts: a broker, a Celery worker process, this host.

Alice owns project `alpha`; Bob is a read-only member of `alpha`; Charlie owns
project `bravo` and must never see anything of `alpha`.
"""

import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from nbcloud.datadir import prepare
from nbcloud.projects.models import ApiToken, Membership, Project, Role
from workers import environments
from workers.runtimes import LaunchSpec
from workers.runtimes.process import free_port

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    """The tests' data directory (NBCLOUD_DATA_DIR, var/test) and secret key, made as
    `manage.py setup` makes them, before the test database (SQLite: a file there)."""
    prepare()


@pytest.fixture(scope="session", autouse=True)
def _localhost_subdomains():
    """Resolve `*.localhost` to loopback in the tests' process, as browsers and curl do
    (RFC 6761): each notebook's origin is `<id>.localhost:<port>` on the embedded default,
    and the platform's test server listens on 127.0.0.1."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if isinstance(host, bytes):
            host = host.decode()
        if isinstance(host, str) and host.lower().rstrip(".").endswith(".localhost"):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
    yield
    socket.getaddrinfo = real


@pytest.fixture(autouse=True)
def _isolated_catalog():
    from nbcloud.catalog.services import catalog

    catalog.cache_clear()
    yield
    catalog.cache_clear()


def make_notebook(project: Project, **fields):
    """A notebook row as the API would create it (a CPU conda/JupyterLab one)."""
    from nbcloud.notebooks.models import Notebook

    spec = {
        "name": "n",
        "framework_id": "conda",
        "framework_version": "py311",
        "editor_id": "jupyterlab",
        "flavor": "ai1-1-cpu",
        "cpu": 1,
        "region": "GRA",
    }
    return Notebook.objects.create(project=project, **{**spec, **fields})


def notebook_url(platform_server: str, notebook_id) -> str:
    """A notebook's `status.url` on the embedded default: its own origin, <id>.localhost."""
    port = urlsplit(platform_server).port
    return f"http://{notebook_id}.localhost:{port}/notebooks/{notebook_id}/"


def _client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def _member(django_user_model, username: str, project: Project, role: str):
    user, _ = django_user_model.objects.get_or_create(username=username)
    Membership.objects.get_or_create(project=project, user=user, defaults={"role": role})
    _, value = ApiToken.issue(project=project, user=user, role=role, name=f"{username}-{role}")
    return user, value


@pytest.fixture
def alpha(db):
    return Project.objects.create(name="alpha")


@pytest.fixture
def bravo(db):
    return Project.objects.create(name="bravo")


@pytest.fixture
def alice(django_user_model, alpha):
    return _member(django_user_model, "alice", alpha, Role.OPERATOR)


@pytest.fixture
def bob(django_user_model, alpha):
    return _member(django_user_model, "bob", alpha, Role.READ)


@pytest.fixture
def charlie(django_user_model, bravo):
    return _member(django_user_model, "charlie", bravo, Role.OPERATOR)


@pytest.fixture
def alice_api(alice) -> APIClient:
    return _client(alice[1])


@pytest.fixture
def bob_api(bob) -> APIClient:
    return _client(bob[1])


@pytest.fixture
def charlie_api(charlie) -> APIClient:
    return _client(charlie[1])


# The real parts.


@pytest.fixture(scope="session")
def broker_url():
    """The machine's broker when CELERY_BROKER_URL is set (CI), else the embedded one."""
    if not settings.EMBEDDED_BROKER:
        yield settings.CELERY_BROKER_URL
        return
    from nbcloud.broker import start_embedded_broker

    server = start_embedded_broker(settings.EMBEDDED_BROKER_SOCKET)
    try:
        yield settings.CELERY_BROKER_URL
    finally:
        server.shutdown()


def _database_url() -> str:
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = quote(db["USER"] or "")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"])
    host = db["HOST"] or "localhost"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{auth}@{host}{port}/{db['NAME']}"


def _purge(broker: str, queues: list[str]) -> None:
    from nbcloud.celery import app

    with app.connection_for_write(broker) as conn:
        channel = conn.default_channel
        for queue in queues:
            try:
                channel.queue_purge(queue)
            except Exception:  # a queue that was never declared
                continue


@pytest.fixture(scope="session")
def worker_host() -> str:
    return settings.NBCLOUD_HOST_NAME


@pytest.fixture(scope="session")
def platform_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def public_url(platform_port) -> str:
    return f"http://127.0.0.1:{platform_port}"


# The scrape token the platform and the workers started here answer (Bearer).
METRICS_TOKEN = "test-metrics-token"


def _service_env(broker_url: str, worker_host: str, public_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "NBCLOUD_METRICS_TOKEN": METRICS_TOKEN,
        "DATABASE_URL": _database_url(),
        "CELERY_BROKER_URL": broker_url,
        "NBCLOUD_HOST_NAME": worker_host,
        "NBCLOUD_DATA_DIR": str(settings.DATA_DIR),
        "NBCLOUD_PUBLIC_URL": public_url,
        "NBCLOUD_RECONCILE_INTERVAL": "2",
    }


def _start_service(name: str, argv: list[str], env: dict, ready) -> subprocess.Popen:
    log_path = settings.DATA_DIR / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not ready(log_path.read_bytes()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{name} did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    return proc


def _stop_service(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def platform_server(django_db_setup, broker_url, worker_host, platform_port, public_url):
    """The platform's ASGI app (API + gateway) served by uvicorn on the test database."""
    argv = [
        str(Path(sys.executable).parent / "uvicorn"),
        "nbcloud.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(platform_port),
        "--app-dir",
        str(ROOT / "platform"),
    ]
    env = _service_env(broker_url, worker_host, public_url)
    proc = _start_service("web", argv, env, lambda out: b"Uvicorn running" in out)
    yield public_url
    _stop_service(proc)


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, broker_url, worker_host, public_url):
    """A real `celery worker` process on the test database and the real broker."""
    proc = start_worker(broker_url, worker_host, public_url, queues=["control", "billing"])
    yield proc
    _stop_service(proc)


def start_worker(
    broker_url: str, host: str, public_url: str, *, queues=(), env=None, name: str = ""
) -> subprocess.Popen:
    """A `celery worker` for `host` (its queue, plus `queues`), ready to take tasks."""
    queues = [*queues, f"host.{host}"]
    _purge(broker_url, queues)
    argv = [
        str(Path(sys.executable).parent / "celery"),
        "-A",
        "workers",
        "worker",
        "-Q",
        ",".join(queues),
        "-c",
        "2",
        "-n",
        f"{name or 'test'}-{host}@%h",
        "--loglevel",
        "INFO",
    ]
    service_env = {**_service_env(broker_url, host, public_url), **(env or {})}
    return _start_service(name or "worker", argv, service_env, lambda out: b"ready." in out)


def kill_worker(proc: subprocess.Popen) -> None:
    """SIGKILL a worker and its pool processes (not the editors they launched)."""
    import contextlib
    import signal

    import psutil

    pool = [c for c in psutil.Process(proc.pid).children() if "celery" in " ".join(c.cmdline())]
    for pid in [proc.pid, *(c.pid for c in pool)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(10)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API (moto_server) on loopback; any keys are accepted."""
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("moto_server did not start")
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    _stop_service(proc)


# What a root-owned secret of the host holds, for the attacks on root's file work.
ROOT_SECRET = b"root's secret: never to leave its directory\n"


@pytest.fixture(params=["data_filter", "fallback"])
def path_kind(request, monkeypatch):
    if request.param == "fallback":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python's tarfile has no data filter (only the fallback applies)")
    return request.param


@pytest.fixture
def vault(tmp_path):
    """A 0700 directory holding a 0600 secret, beside the destination."""
    vault = tmp_path / "vault"
    vault.mkdir(mode=0o700)
    secret = vault / "secret"
    secret.write_bytes(ROOT_SECRET)
    secret.chmod(0o600)
    return vault


def make_s3_datastore(project, endpoint: str, alias: str = "store", secret: str = "testing"):
    """An s3 datastore row of `project` on the test's object store (moto's keys)."""
    from nbcloud.projects.models import Datastore

    store = Datastore(
        project=project,
        alias=alias,
        type="s3",
        endpoint=endpoint,
        region="us-east-1",
        access_key="testing",
    )
    store.set_secrets({"secret_key": secret})
    store.save()
    return store


@pytest.fixture
def s3_bucket(s3_endpoint):
    """`s3_bucket(name)` makes a bucket and returns a boto3 client for it; emptied and
    deleted after the test."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    made: list[str] = []

    def make(name: str):
        client.create_bucket(Bucket=name)
        made.append(name)
        return client

    yield make
    for name in made:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=item["Key"])
        client.delete_bucket(Bucket=name)


@pytest.fixture
def this_host(transactional_db):
    """This machine registered as a host (what a worker does when it starts)."""
    from workers.lifecycle import register_host

    register_host()
    from nbcloud.hosts.models import Host

    return Host.objects.get(name=settings.NBCLOUD_HOST_NAME)


@pytest.fixture(scope="session")
def conda_env():
    """The `conda` environment built for the process runtime (once per machine)."""
    from workers import environments

    return environments.build("conda")


# Runtimes driven directly, without the API (the runtime contract and the sandbox).


def _workspace(base_dir, uid: int):
    path = base_dir / f"ws-{uid}"
    path.mkdir(mode=0o700)
    os.chown(path, uid, uid)
    return path


@pytest.fixture
def base_dir(settings):
    # Not under /tmp: the sandbox has a private /tmp of its own.
    path = settings.DATA_DIR / f"contract-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_spec(base_dir, conda_env, settings):
    settings.DATA_DIR = base_dir

    def make(**overrides) -> LaunchSpec:
        notebook_id = str(uuid.uuid4())
        uid = overrides.pop(
            "uid", settings.NBCLOUD_SANDBOX_UID_BASE + 3_000_000 + int(notebook_id[:4], 16)
        )
        fields = {
            "notebook_id": notebook_id,
            "editor_id": "jupyterlab",
            "env_dir": conda_env,
            "workspace": _workspace(base_dir, uid),
            "uid": uid,
            "secret": uuid.uuid4().hex,
            "base_url": f"/notebooks/{notebook_id}/",
            "env_vars": {"GREETING": "hi"},
            "image": environments.resolve("conda")[1].image,
            "project": "alpha",
        }
        return LaunchSpec(**{**fields, **overrides})

    return make


@pytest.fixture(scope="session")
def code_server():
    """code-server installed on this machine (once; a no-op when it is there).

    Skipped only where Node.js 20, which no reachable registry provides, is
    missing; any other install failure is an error.
    """
    from workers import code_server as cs

    if not cs.is_installed():
        try:
            cs.check_node()
        except cs.CodeServerInstallError as exc:
            pytest.skip(str(exc))
    return cs.ensure_code_server()


def wait_for(predicate, timeout: float = 60, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def api_status(api, url: str) -> dict:
    """A notebook's `status` through the API (asserting the call succeeds)."""
    reply = api.get(url)
    assert reply.status_code == 200, reply.content
    return reply.json()["status"]


def wait_state(api, url: str, state: str, timeout: float = 120) -> dict:
    """Poll the API until the notebook at `url` is in `state`; its status then."""
    return wait_for(
        lambda: (s := api_status(api, url))["state"] == state and s,
        timeout=timeout,
        what=f"state {state} (last: {api_status(api, url)})",
    )


class Kernel:
    """A JupyterLab kernel driven over the Jupyter Server REST + websocket API."""

    def __init__(self, base_url: str, headers: dict[str, str]):
        import requests
        import websocket

        self.base_url = base_url
        self.headers = headers
        reply = requests.post(f"{base_url}api/kernels", headers=headers, json={}, timeout=30)
        reply.raise_for_status()
        self.id = reply.json()["id"]
        ws_url = base_url.replace("http://", "ws://", 1) + f"api/kernels/{self.id}/channels"
        self.ws = websocket.create_connection(ws_url, header=headers, timeout=60)

    def submit(self, code: str) -> str:
        """Send code to run without waiting; returns the request's message id."""
        import json
        import uuid

        msg_id = uuid.uuid4().hex
        self.ws.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "msg_type": "execute_request",
                        "username": "test",
                        "session": uuid.uuid4().hex,
                        "version": "5.3",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "channel": "shell",
                    "buffers": [],
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": False,
                        "user_expressions": {},
                        "allow_stdin": False,
                    },
                }
            )
        )
        return msg_id

    def execute(self, code: str, timeout: float = 120) -> str:
        """Run code; return its stdout, or raise with the traceback."""
        import json

        msg_id = self.submit(code)
        out, error, deadline = [], None, time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                out.append(content["data"].get("text/plain", "") + "\n")
            elif kind == "error":
                error = "\n".join(content["traceback"])
            elif kind == "status" and content["execution_state"] == "idle":
                break
        if error:
            raise AssertionError(f"kernel error:\n{error}")
        return "".join(out)

    def close(self) -> None:
        import requests

        self.ws.close()
        requests.delete(f"{self.base_url}api/kernels/{self.id}", headers=self.headers, timeout=30)


# Git servers for git volumes.


@pytest.fixture(scope="session")
def repos(tmp_path_factory) -> Path:
    """A folder of bare repositories: demo.git with three commits on main and a dev branch."""
    import git

    root = tmp_path_factory.mktemp("repos")
    work = git.Repo.init(root / "work", initial_branch="main")
    for i in range(3):
        (root / "work" / "README.md").write_text(f"version {i}\n")
        work.index.add(["README.md"])
        work.index.commit(f"commit {i}")
    work.create_head("dev").checkout()
    (root / "work" / "dev.txt").write_text("on dev\n")
    work.index.add(["dev.txt"])
    work.index.commit("dev work")
    work.heads.main.checkout()
    work.clone(root / "demo.git", bare=True)
    return root


@pytest.fixture(scope="session")
def git_daemon(repos):
    port = free_port()
    proc = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
            f"--port={port}",
            f"--base-path={repos}",
            str(repos),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: _listening(port), timeout=20, what="git daemon")
    yield f"git://127.0.0.1:{port}"
    _stop_service(proc)


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


# The Docker Engine and the test environment's image, for the docker runtime's tests.
# Without a reachable dockerd they are skipped, unless NBCLOUD_REQUIRE_DOCKER is set
# (CI sets it): then they fail, so CI never skips them silently.


def _unavailable(reason: str):
    if os.environ.get("NBCLOUD_REQUIRE_DOCKER"):
        pytest.fail(f"{reason} (NBCLOUD_REQUIRE_DOCKER is set)")
    pytest.skip(f"{reason}; set NBCLOUD_REQUIRE_DOCKER=1 to make this a failure")


@pytest.fixture(scope="session")
def docker_api():
    """An Engine API client, or a skip/failure naming what is missing."""
    import docker

    try:
        api = docker.from_env(timeout=30)
        api.ping()
    except docker.errors.DockerException as exc:
        _unavailable(f"no Docker Engine here ({exc}); start dockerd")
    return api


@pytest.fixture(scope="session")
def docker_image(docker_api) -> str:
    """The conda environment's image, built when missing or stale (a no-op otherwise)."""
    from workers.runtimes import images

    try:
        return images.build("conda", log=lambda _: None)
    except images.ImageBuildError as exc:
        _unavailable(f"cannot build the test image: {exc}; run: make docker-images")


@pytest.fixture
def docker_containers(docker_api):
    """The containers of a notebook, as the runtime labels them."""
    from workers.runtimes.docker import LABEL_NOTEBOOK

    def containers(notebook_id: str) -> list:
        import docker

        for _ in range(10):
            try:
                return docker_api.containers.list(
                    all=True, filters={"label": f"{LABEL_NOTEBOOK}={notebook_id}"}
                )
            except docker.errors.NotFound:  # listed, then gone before it was inspected
                time.sleep(0.05)
        raise AssertionError(f"the containers of {notebook_id} keep changing")

    return containers


@pytest.fixture(scope="session")
def git_sshd(repos, tmp_path_factory):
    """sshd on loopback serving `repos` to one key: (ssh URL of demo.git, the private key)."""
    if os.geteuid() != 0 or not Path("/usr/sbin/sshd").exists():
        pytest.skip("needs root and openssh-server (make sysdeps installs it)")
    folder = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True
        )
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    port = free_port()
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPidFile {folder / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(folder / "sshd_config")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: _listening(port), timeout=20, what="sshd")
    yield f"ssh://root@127.0.0.1:{port}{repos}/demo.git", (folder / "client_key").read_text()
    _stop_service(proc)
