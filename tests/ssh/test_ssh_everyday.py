"""What everyday SSH use (and VS Code Remote-SSH) needs, through the gateway with the
real OpenSSH tools, into a real notebook; and the sandbox still holds inside."""

import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import termios
import time

import pytest

from support.waiting import wait_for
from workers.runtimes.process import free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(os.geteuid() != 0, reason="the process runtime's sandbox needs root"),
]


@pytest.fixture
def notebook(start_notebook, make_key):
    key = make_key("own")
    return start_notebook(ssh_public_keys=[key.public]), key


PTY_PROBE = (
    'python -c \'import os,sys; print("probe", os.getuid(), os.getcwd(), '
    'sorted(os.listdir("/workspace"))[:3] is not None, sys.stdin.isatty(), '
    "os.get_terminal_size().columns)'; exit 3\n"
)


def test_an_interactive_shell_has_a_pty_in_the_workspace_as_the_notebooks_uid(notebook, ssh):
    notebook_id, key = notebook
    done = ssh(key, notebook_id, "-tt", input=PTY_PROBE.encode(), timeout=60)
    out = done.stdout.decode(errors="replace")
    assert "probe " in out, (out, done.stderr)
    probe = next(line for line in out.splitlines() if line.startswith("probe "))
    _, uid, cwd, listed, tty, _columns = probe.split()
    assert int(uid) >= 1000 and cwd == "/workspace" and listed == "True" and tty == "True"
    assert done.returncode == 3


def test_a_window_change_reaches_the_program_in_the_pty(notebook, ssh):
    notebook_id, key = notebook
    master, slave = os.openpty()
    _set_size(master, 24, 80)
    proc = ssh(
        key, notebook_id, "-tt", "stty size; read line; stty size",
        popen=True, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    try:
        assert "24 80" in _read_until(master, "24 80")
        _set_size(master, 45, 123)
        proc.send_signal(signal.SIGWINCH)
        time.sleep(0.5)
        os.write(master, b"go\r")
        assert "45 123" in _read_until(master, "45 123")
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        os.close(master)


def _set_size(fd: int, rows: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def _read_until(fd: int, wanted: str, timeout: float = 30) -> str:
    seen, deadline = "", time.monotonic() + timeout
    while wanted not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            try:
                seen += os.read(fd, 4096).decode(errors="replace")
            except OSError:
                break
    return seen


def test_a_command_sees_the_environment_path_and_its_output_and_exit_status(notebook, ssh):
    notebook_id, key = notebook
    done = ssh(key, notebook_id, "command -v python; echo out; echo err >&2; exit 42")
    assert done.returncode == 42
    lines = done.stdout.decode().split()
    assert lines[0].startswith("/var/lib/nbcloud/envs/") or "/envs/" in lines[0], lines
    assert lines[1] == "out"
    assert done.stderr.decode().strip() == "err"
    big = ssh(key, notebook_id, "head -c 3000000 /dev/zero | base64 | wc -c")
    assert big.stdout.decode().strip() == "4052632", big


def test_scp_both_ways_and_sftp_listing(notebook, ssh, tmp_path):
    notebook_id, key = notebook
    payload = os.urandom(3 * 1024 * 1024)
    (tmp_path / "up.bin").write_bytes(payload)
    target = f"{notebook_id}@127.0.0.1"
    up = ssh(key, notebook_id, str(tmp_path / "up.bin"), f"{target}:/workspace/up.bin", tool="scp")
    assert up.returncode == 0, up.stderr
    check = ssh(key, notebook_id, "stat -c '%u %s' /workspace/up.bin; id -u")
    owner, size, uid = check.stdout.decode().split()
    assert owner == uid and int(size) == len(payload)

    down = ssh(key, notebook_id, f"{target}:up.bin", str(tmp_path / "down.bin"), tool="scp")
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "down.bin").read_bytes() == payload

    listing = ssh(key, notebook_id, "-b", "-", target, tool="sftp", input=b"ls -l /workspace\n")
    assert listing.returncode == 0, listing.stderr
    assert b"up.bin" in listing.stdout

    # The host's files are no more reachable through sftp than from a shell.
    escape = ssh(key, notebook_id, "-b", "-", target, tool="sftp", input=b"get /root/.bashrc\n")
    assert escape.returncode != 0


SERVE = (
    "nohup python -m http.server {port} --bind 127.0.0.1 --directory /workspace "
    ">/dev/null 2>&1 & echo hi > /workspace/hello.txt"
)


def test_local_forwarding_reaches_a_server_in_the_notebook_and_nothing_else(notebook, ssh):
    notebook_id, key = notebook
    inside = free_port()
    assert ssh(key, notebook_id, SERVE.format(port=inside)).returncode == 0
    local, outside = free_port(), free_port()
    proc = ssh(
        key, notebook_id, "-N",
        "-L", f"{local}:localhost:{inside}",
        # The host's own loopback service (the broker) is not the notebook's.
        "-L", f"{outside}:10.99.0.1:6379",
        popen=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        body = wait_for(lambda: _fetch(local, "/hello.txt"), timeout=30, what="the forward")
        assert body.endswith(b"hi\n")
        assert _fetch(outside, "/") is None
    finally:
        proc.kill()
        proc.wait(10)


def _fetch(port: int, path: str) -> bytes | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data if b" 200 " in data.split(b"\r\n", 1)[0] + b" " else None
    except OSError:
        return None


def test_remote_and_agent_forwarding_are_refused(notebook, ssh, tmp_path):
    notebook_id, key = notebook
    remote = ssh(key, notebook_id, "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:22", "true")
    assert remote.returncode == 255
    assert b"forwarding failed" in remote.stderr.lower()

    agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True)
    env = dict(
        line.split(";")[0].split("=", 1) for line in agent.stdout.splitlines() if "=" in line
    )
    try:
        done = ssh(key, notebook_id, "-A", "echo ${SSH_AUTH_SOCK:-none}", env=env)
        assert done.returncode == 0
        assert done.stdout.decode().strip() == "none"
    finally:
        subprocess.run(["ssh-agent", "-k"], env={**os.environ, **env}, capture_output=True)


SANDBOX_PROBE = """
import json, os, socket
def reach(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return True
    except OSError as exc:
        return type(exc).__name__
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'):
            return line.split()[1]
print(json.dumps({
    'uid': os.getuid(), 'cap_eff': status('CapEff'), 'no_new_privs': status('NoNewPrivs'),
    'root': os.access('/root', os.R_OK), 'data': os.path.exists(%(data)r),
    'api': reach('127.0.0.1', %(api)d), 'api_on_host': reach('169.254.1.1', %(api)d),
    'broker': reach('127.0.0.1', 6379), 'usr': os.access('/usr/lib', os.W_OK),
    'pid1': open('/proc/1/cmdline').read().split('\\0')[0],
}))
"""


def test_inside_an_ssh_session_the_sandbox_still_holds(notebook, ssh, platform_port, settings):
    notebook_id, key = notebook
    probe = SANDBOX_PROBE % {"data": str(settings.DATA_DIR), "api": platform_port}
    done = ssh(key, notebook_id, f"python - <<'EOF'\n{probe}\nEOF")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert seen["uid"] >= settings.NBCLOUD_SANDBOX_UID_BASE
    assert seen["cap_eff"] == "0000000000000000" and seen["no_new_privs"] == "1"
    assert seen["root"] is False and seen["data"] is False and seen["usr"] is False
    assert seen["api"] is not True and seen["api_on_host"] is not True
    assert seen["broker"] is not True
    assert seen["pid1"].endswith("bwrap")  # the editor's own pid namespace
