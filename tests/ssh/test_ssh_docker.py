"""Sessions in a notebook on the docker runtime, through a host's SSH endpoint: the
Engine's own exec, as the notebook's uid in /workspace, with the environment's
PATH, its variables, a pty when asked, and the exit status."""

import asyncio
import os

import asyncssh
import pytest

from nbcloud.hosts.models import Host
from nbcloud.ssh.endpoints import relay_secret
from support.factories import make_notebook

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the host's endpoint)"),
]


@pytest.fixture
def container_notebook(make_spec, docker_image, docker_api, this_host, alpha):
    from workers.lifecycle import wait_ready
    from workers.runtimes.docker import DockerRuntime

    runtime = DockerRuntime(make_spec(image=docker_image))
    runtime.start()
    try:
        wait_ready(runtime, 60)
        Host.objects.filter(pk=this_host.pk).update(runtime="docker")
        notebook = make_notebook(
            alpha,
            id=runtime.spec.notebook_id,
            state="RUNNING",
            host=this_host,
            runtime_state=runtime.get_state(),
            sandbox_uid=runtime.spec.uid,
            env_vars=[{"name": "GREETING", "value": "hi"}],
        )
        yield notebook, runtime
    finally:
        runtime.stop(5)


@pytest.fixture
def endpoint(this_host):
    from workers.ssh_endpoint import HostSshEndpoint

    served = HostSshEndpoint(this_host.name)
    served.start()
    yield served
    served.stop()


def test_a_session_in_a_container_runs_as_the_notebook_in_its_workspace(
    container_notebook, endpoint
):
    notebook, runtime = container_notebook

    async def session():
        async with asyncssh.connect(
            "127.0.0.1",
            endpoint.port,
            username=str(notebook.pk),
            password=relay_secret(),
            known_hosts=None,
            client_keys=None,
        ) as conn:
            command = await conn.run(
                "id -u; pwd; command -v python; echo $GREETING; whoami; echo err >&2; exit 4"
            )
            # The Engine sizes an exec's terminal just after it starts: ask a moment later.
            pty = await conn.run("tty; sleep 1; stty size", term_type="xterm", term_size=(100, 30))
            return command, pty

    command, pty = asyncio.run(session())
    assert command.exit_status == 4, command.stderr
    uid, cwd, python, greeting, name = command.stdout.split()
    assert int(uid) == runtime.spec.uid and cwd == "/workspace" and name == "nbuser"
    assert python == "/opt/env/bin/python" and greeting == "hi"
    assert command.stderr.strip() == "err"
    assert pty.exit_status == 0
    lines = pty.stdout.split()
    assert lines[0].startswith("/dev/pts/") and lines[1:] == ["30", "100"]


def test_sftp_in_a_container_writes_as_the_notebook_and_reads_back(container_notebook, endpoint):
    notebook, runtime = container_notebook
    payload = os.urandom(512 * 1024)

    async def session():
        async with asyncssh.connect(
            "127.0.0.1",
            endpoint.port,
            username=str(notebook.pk),
            password=relay_secret(),
            known_hosts=None,
            client_keys=None,
        ) as conn:
            async with conn.start_sftp_client() as sftp:
                async with sftp.open("/workspace/up.bin", "wb") as out:
                    await out.write(payload)
                async with sftp.open("/workspace/up.bin", "rb") as back:
                    read = await back.read()
                names = await sftp.listdir("/workspace")
                attrs = await sftp.stat("/workspace/up.bin")
                escaped = None
                try:
                    await sftp.stat("/etc/postgresql")  # on this host, not in the image
                except asyncssh.SFTPError as exc:
                    escaped = exc
            return read, names, attrs, escaped

    read, names, attrs, escaped = asyncio.run(session())
    assert read == payload and "up.bin" in names
    assert attrs.uid == runtime.spec.uid
    # The container's own filesystem, not the host's.
    assert isinstance(escaped, asyncssh.SFTPNoSuchFile)
