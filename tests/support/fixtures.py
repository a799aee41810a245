"""The suite's shared fixtures (a pytest plugin, registered in tests/conftest.py).

People: Alice owns project `alpha`; Bob is a read-only member of `alpha`;
Charlie owns project `bravo` and must never see anything of `alpha`. Each has an
API client with an app token of theirs.

The real parts, started on loopback by the fixtures and stopped by them: a
broker, the platform (uvicorn), a Celery worker, this host registered,
moto_server, git daemon, sshd; the runtimes driven directly; the Docker Engine.
Fixtures that serve one folder only live in that folder's conftest.py.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from nbcloud.projects.models import Project, Role
from support.factories import api_client, make_member
from support.paths import ROOT
from support.services import (
    listening,
    service_env,
    start_service,
    start_worker,
    stop_service,
)
from support.waiting import wait_for
from workers import environments
from workers.runtimes import LaunchSpec
from workers.runtimes.process import free_port


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


# People.


@pytest.fixture
def alpha(db):
    return Project.objects.create(name="alpha")


@pytest.fixture
def bravo(db):
    return Project.objects.create(name="bravo")


@pytest.fixture
def alice(django_user_model, alpha):
    return make_member(django_user_model, "alice", alpha, Role.OPERATOR)


@pytest.fixture
def bob(django_user_model, alpha):
    return make_member(django_user_model, "bob", alpha, Role.READ)


@pytest.fixture
def charlie(django_user_model, bravo):
    return make_member(django_user_model, "charlie", bravo, Role.OPERATOR)


@pytest.fixture
def alice_api(alice) -> APIClient:
    return api_client(alice[1])


@pytest.fixture
def bob_api(bob) -> APIClient:
    return api_client(bob[1])


@pytest.fixture
def charlie_api(charlie) -> APIClient:
    return api_client(charlie[1])


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


@pytest.fixture(scope="session")
def worker_host() -> str:
    return settings.NBCLOUD_HOST_NAME


@pytest.fixture(scope="session")
def platform_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def public_url(platform_port) -> str:
    return f"http://127.0.0.1:{platform_port}"


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
    env = service_env(broker_url, worker_host, public_url)
    proc = start_service("web", argv, env, lambda out: b"Uvicorn running" in out)
    yield public_url
    stop_service(proc)


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, broker_url, worker_host, public_url):
    """A real `celery worker` process on the test database and the real broker."""
    proc = start_worker(broker_url, worker_host, public_url, queues=["control", "billing"])
    yield proc
    stop_service(proc)


@pytest.fixture
def this_host(transactional_db):
    """This machine registered as a host (what a worker does when it starts)."""
    from nbcloud.hosts.models import Host
    from workers.lifecycle import register_host

    register_host()
    return Host.objects.get(name=settings.NBCLOUD_HOST_NAME)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API (moto_server) on loopback; any keys are accepted."""
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: listening(port), timeout=30, interval=0.1, what="moto_server")
    yield f"http://127.0.0.1:{port}"
    stop_service(proc)


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


# Runtimes driven directly, without the API (the runtime contract and the sandbox).


@pytest.fixture(scope="session")
def conda_env():
    """The `conda` environment built for the process runtime (once per machine)."""
    return environments.build("conda")


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
    wait_for(lambda: listening(port), timeout=20, what="git daemon")
    yield f"git://127.0.0.1:{port}"
    stop_service(proc)


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
    wait_for(lambda: listening(port), timeout=20, what="sshd")
    yield f"ssh://root@127.0.0.1:{port}{repos}/demo.git", (folder / "client_key").read_text()
    stop_service(proc)


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


# A real one-node Slurm cluster (tests/support/slurm.py), for the slurm runtime's
# tests. Skipped where it cannot start (not root, slurm-wlm missing), unless
# NBCLOUD_REQUIRE_SLURM is set (CI sets it): then they fail.


@pytest.fixture(scope="session")
def slurm_cluster():
    import tempfile

    from support import slurm

    reason = slurm.missing()
    if reason:
        if os.environ.get("NBCLOUD_REQUIRE_SLURM"):
            pytest.fail(f"no Slurm here: {reason} (NBCLOUD_REQUIRE_SLURM is set)")
        pytest.skip(f"no Slurm here: {reason}; set NBCLOUD_REQUIRE_SLURM=1 to make this a failure")
    no_accounting = slurm.mysql_missing()
    if no_accounting and os.environ.get("NBCLOUD_REQUIRE_SLURM"):
        pytest.fail(f"no Slurm accounting here: {no_accounting} (NBCLOUD_REQUIRE_SLURM is set)")
    cluster = slurm.start(Path(tempfile.mkdtemp(prefix="nbcloud-slurm-")))
    yield cluster
    slurm.stop(cluster)


@pytest.fixture
def slurm_idle(slurm_cluster):
    """The cluster with no job left by a test."""
    yield slurm_cluster
    slurm_cluster.cancel_all()
