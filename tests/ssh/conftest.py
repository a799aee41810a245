"""Fixtures for SSH into notebooks: the platform's gateway as its own process,
keys made with OpenSSH's ssh-keygen, and the real OpenSSH client."""

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings

from nbcloud.notebooks.models import Notebook
from nbcloud.ssh.models import HostEndpoint
from support.paths import ROOT
from support.services import service_env, start_service, stop_service
from support.waiting import wait_for, wait_state
from workers.runtimes.process import free_port

SPEC = {
    "name": "remote",
    "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
    "resources": {"cpu": 1},
}


@pytest.fixture(scope="session")
def ssh_gateway(django_db_setup, broker_url, worker_host, public_url) -> int:
    """`manage.py runsshgateway` on a free loopback port (its port)."""
    if not shutil.which("ssh"):
        pytest.skip("needs OpenSSH's client (apt-get install openssh-client)")
    port = free_port()
    env = {**service_env(broker_url, worker_host, public_url), "NBCLOUD_SSH_PORT": str(port)}
    argv = [sys.executable, str(ROOT / "manage.py"), "runsshgateway"]
    proc = start_service("sshgateway", argv, env, lambda out: b"SSH gateway listening" in out)
    yield port
    stop_service(proc)


@dataclass(frozen=True)
class Key:
    private: Path
    public: str


@pytest.fixture
def make_key(tmp_path):
    def make(name: str) -> Key:
        path = tmp_path / name
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
            check=True,
        )
        return Key(path, (tmp_path / f"{name}.pub").read_text().strip())

    return make


@pytest.fixture
def ssh(ssh_gateway, tmp_path):
    """Run OpenSSH's `ssh` (or scp/sftp with tool=) against the gateway as a notebook;
    popen=True returns the running process instead of waiting for it."""

    def run(
        key: Key,
        notebook_id: str,
        *args: str,
        tool: str = "ssh",
        timeout: float = 60,
        popen: bool = False,
        env: dict | None = None,
        **kw,
    ):
        options = [
            "-o", "StrictHostKeyChecking=no",
            "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR",
            "-i", str(key.private),
        ]  # fmt: skip
        if tool == "ssh":
            argv = ["ssh", *options, "-p", str(ssh_gateway), f"{notebook_id}@127.0.0.1", *args]
        else:
            argv = [tool, *options, "-P", str(ssh_gateway), *args]
        base = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        if popen:
            return subprocess.Popen(argv, env={**base, **(env or {})}, **kw)
        return subprocess.run(
            argv, capture_output=True, timeout=timeout, env={**base, **(env or {})}, **kw
        )

    return run


@pytest.fixture
def start_notebook(platform_server, celery_worker_process, conda_env, this_host, alice_api):
    """Start a notebook through the API (spec overrides as keywords); returns its id."""
    started = []

    def start(**spec) -> str:
        created = alice_api.post(
            "/api/v1/projects/alpha/notebooks/", {**SPEC, **spec}, format="json"
        )
        assert created.status_code == 201, created.content
        notebook_id = created.json()["id"]
        started.append(notebook_id)
        wait_state(alice_api, f"/api/v1/projects/alpha/notebooks/{notebook_id}/", "RUNNING")
        # The worker registers its endpoint at start and at each heartbeat (the
        # tests' database is emptied between tests).
        wait_for(
            lambda: HostEndpoint.objects.filter(host=this_host).exists(),
            timeout=settings.NBCLOUD_HEARTBEAT_INTERVAL + 10,
            what="the host's SSH endpoint",
        )
        return notebook_id

    yield start
    from workers.lifecycle import runtime_for

    for notebook_id in started:
        notebook = Notebook.objects.filter(pk=notebook_id).first()
        if notebook is not None and notebook.runtime_state:
            runtime_for(notebook).stop(5)
