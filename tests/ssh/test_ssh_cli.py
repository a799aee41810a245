"""`nbc notebook exec` and `nbc notebook ssh` against a real platform and notebook."""

import base64
import os
import subprocess
import sys

import pytest

from nbcloud.notebooks.models import NotebookEvent

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(os.geteuid() != 0, reason="the process runtime's sandbox needs root"),
]

PROBE = (
    "import os, sys; print(os.getcwd(), os.getuid()); print('oops', file=sys.stderr); sys.exit(5)"
)


def nbc(token: str, platform_server: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "NBC_URL": platform_server,
        "NBC_TOKEN": token,
        "NBC_PROJECT": "alpha",
        "NBC_CONFIG": str(tmp_path / "nbc.toml"),
    }
    argv = [sys.executable, "-c", "from nbcloud.cli.main import app; app()", *args]
    return subprocess.run(argv, capture_output=True, env=env, timeout=120)


def test_nbc_exec_streams_the_output_and_exits_with_the_commands_code(
    start_notebook, platform_server, alice, bob, tmp_path
):
    notebook_id = start_notebook()
    done = nbc(
        alice[1], platform_server, tmp_path,
        "notebook", "exec", notebook_id, "--", "python", "-c", PROBE,
    )  # fmt: skip
    assert done.returncode == 5, done.stderr
    cwd, uid = done.stdout.decode().split()
    assert cwd == "/workspace" and int(uid) > 0
    assert done.stderr.decode().strip() == "oops"
    assert NotebookEvent.objects.filter(
        notebook_id=notebook_id, code="SSH_SESSION", message__startswith="exec opened"
    ).exists()

    refused = nbc(bob[1], platform_server, tmp_path, "notebook", "exec", notebook_id, "--", "id")
    assert refused.returncode == 1
    assert b"operator" in refused.stderr


WAIT_FOR_GO = "echo first; while [ ! -e /workspace/go ]; do sleep 0.1; done; echo second; exit 3"


def test_the_exec_api_streams_each_line_as_the_command_writes_it(
    start_notebook, platform_server, alice
):
    """The first line arrives while the command still runs: it waits for a file that
    only a second exec, sent after that line was read, creates. A buffered answer
    would hold the first line until the command timed out."""
    import json

    import httpx

    notebook_id = start_notebook()
    url = f"{platform_server}/api/v1/projects/alpha/notebooks/{notebook_id}/exec/"
    auth = {"Authorization": f"Bearer {alice[1]}"}
    with httpx.Client(headers=auth, timeout=60) as http:
        body = {"command": ["sh", "-c", WAIT_FOR_GO], "timeout": 30}
        with http.stream("POST", url, json=body) as reply:
            assert reply.status_code == 200
            lines = reply.iter_lines()
            first = json.loads(next(lines))
            assert first["stream"] == "stdout", first
            assert base64.b64decode(first["data"]) == b"first\n"
            go = http.post(url, json={"command": ["touch", "/workspace/go"]})
            assert go.status_code == 200 and go.text.strip().endswith('{"exit_code": 0}')
            rest = [json.loads(line) for line in lines if line]
    output = b"".join(base64.b64decode(item["data"]) for item in rest if "data" in item)
    assert output == b"second\n" and rest[-1] == {"exit_code": 3}, rest


def test_nbc_ssh_prints_a_config_block_openssh_uses(
    start_notebook, platform_server, alice, make_key, ssh_gateway, tmp_path
):
    key = make_key("laptop")
    notebook_id = start_notebook(ssh_public_keys=[key.public])
    done = nbc(
        alice[1], platform_server, tmp_path,
        "notebook", "ssh", notebook_id, "--config", "-i", str(key.private),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    block = done.stdout.decode()
    assert block.startswith("Host nbcloud-remote\n")
    assert f"User {notebook_id}" in block and "HostName 127.0.0.1" in block
    config = tmp_path / "ssh_config"
    config.write_text(
        block + "    StrictHostKeyChecking no\n"
        f"    UserKnownHostsFile {tmp_path / 'known_hosts'}\n    BatchMode yes\n"
    )
    # The gateway of this test listens on a port of its own (-p); the rest is the block's.
    session = subprocess.run(
        ["ssh", "-F", str(config), "-p", str(ssh_gateway), "nbcloud-remote", "pwd"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert session.returncode == 0, session.stderr
    assert session.stdout.decode().strip() == "/workspace"


def test_the_consoles_terminal_runs_a_command_in_the_notebook(start_notebook, alice, bob):
    """The notebook page's terminal: the same exec, for a person signed in to the console."""
    import shlex

    from django.test import Client

    notebook_id = start_notebook()
    url = f"/projects/alpha/notebooks/{notebook_id}/command/"
    operator = Client()
    operator.force_login(alice[0])
    page = operator.get(f"/projects/alpha/notebooks/{notebook_id}/")
    assert b'id="terminal-h"' in page.content
    ran = operator.post(url, {"command": f"python -c {shlex.quote(PROBE)}"})
    assert ran.status_code == 200, ran.content
    body = ran.content.decode()
    assert "/workspace" in body and "oops" in body and "exit code 5" in body
    assert NotebookEvent.objects.filter(
        notebook_id=notebook_id, code="SSH_SESSION", message__startswith="exec opened"
    ).exists()
    unreadable = operator.post(url, {"command": "echo 'unbalanced"})
    assert "cannot be read" in unreadable.content.decode()

    reader = Client()
    reader.force_login(bob[0])  # a read member: no terminal, and the action is refused
    assert b'id="terminal-h"' not in reader.get(f"/projects/alpha/notebooks/{notebook_id}/").content
    assert reader.post(url, {"command": "id"}).status_code == 403


def test_the_ovh_sdks_exec_runs_a_command_in_the_notebook(
    start_notebook, platform_server, alice, bob
):
    """OVH's `GET /v1/notebook/{id}/exec`, through OVH's own SDK: the output as text,
    then the exit code; read members and interactive use are refused."""
    from ovhai.api.notebook import notebook_exec

    from support.ovhai_sdk import sdk_client

    notebook_id = start_notebook()
    base = f"{platform_server}/ovhai"
    done = notebook_exec.sync_detailed(
        notebook_id, client=sdk_client(alice[1], base), command=["python", "-c", PROBE]
    )
    assert done.status_code == 200, done.content
    text = done.content.decode()
    assert "/workspace" in text and "oops" in text
    assert text.rstrip().endswith("exit code: 5")
    quiet = notebook_exec.sync_detailed(
        notebook_id, client=sdk_client(alice[1], base), command=["python", "-c", PROBE],
        stderr=False,
    )  # fmt: skip
    assert "oops" not in quiet.content.decode()

    tty = notebook_exec.sync_detailed(
        notebook_id, client=sdk_client(alice[1], base), command=["bash"], tty=True
    )
    assert tty.status_code == 400 and b"sshUrl" in tty.content
    reader = notebook_exec.sync_detailed(
        notebook_id, client=sdk_client(bob[1], base), command=["id"]
    )
    assert reader.status_code == 403
