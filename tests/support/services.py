"""Real processes the tests start: Celery workers (control, host agents) and the
environment every service started here shares (the test database, the broker,
the data directory). Each one logs to `<data dir>/<name>.log`."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings

from support.paths import ROOT

CELERY = str(Path(sys.executable).parent / "celery")

# The scrape token the platform and the workers started here answer (Bearer).
METRICS_TOKEN = "test-metrics-token"


def database_url() -> str:
    """The test database as a DATABASE_URL, for processes started here."""
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = quote(db["USER"] or "")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"])
    host = db["HOST"] or "localhost"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{auth}@{host}{port}/{db['NAME']}"


@contextlib.contextmanager
def queues_to_ourselves(queues: list[str]):
    """Workers other tests left running (the session's control worker) stop taking
    from `queues` meanwhile, so the workers a test starts with settings of its own
    get every task sent there; they take from them again after."""
    from nbcloud.celery import app

    taken = app.control.inspect(timeout=2).active_queues() or {}
    others = {
        name: [q["name"] for q in theirs if q["name"] in queues] for name, theirs in taken.items()
    }
    others = {name: mine for name, mine in others.items() if mine}
    for name, mine in others.items():
        for queue in mine:
            app.control.cancel_consumer(queue, destination=[name], reply=True, timeout=5)
    try:
        yield
    finally:
        for name, mine in others.items():
            for queue in mine:
                app.control.add_consumer(queue, destination=[name], reply=True, timeout=5)


def purge_queues(broker: str, queues: list[str]) -> None:
    """Drop what earlier tests left in these queues."""
    from nbcloud.celery import app

    with app.connection_for_write(broker) as conn:
        channel = conn.default_channel
        for queue in queues:
            try:
                channel.queue_purge(queue)
            except Exception:  # a queue that was never declared
                continue


def service_env(broker_url: str, worker_host: str, public_url: str) -> dict[str, str]:
    """The environment of a platform process or a worker started by the tests."""
    return {
        **os.environ,
        "NBCLOUD_METRICS_TOKEN": METRICS_TOKEN,
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": broker_url,
        "NBCLOUD_HOST_NAME": worker_host,
        "NBCLOUD_DATA_DIR": str(settings.DATA_DIR),
        "NBCLOUD_PUBLIC_URL": public_url,
        "NBCLOUD_RECONCILE_INTERVAL": "2",
    }


def start_service(name: str, argv: list[str], env: dict, ready) -> subprocess.Popen:
    """Start `argv`, logging to `<data dir>/<name>.log`, and wait (60 s at most) until
    `ready(log bytes)`; fail the test with the log's tail otherwise."""
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


def stop_service(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def start_worker(
    broker_url: str, host: str, public_url: str, *, queues=(), env=None, name: str = ""
) -> subprocess.Popen:
    """A `celery worker` for `host` (its queue, plus `queues`), ready to take tasks."""
    queues = [*queues, f"host.{host}"]
    purge_queues(broker_url, queues)
    argv = [CELERY, "-A", "workers", "worker", "-Q", ",".join(queues), "-c", "2"]
    argv += ["-n", f"{name or 'test'}-{host}@%h", "--loglevel", "INFO"]
    service = {**service_env(broker_url, host, public_url), **(env or {})}
    return start_service(name or "worker", argv, service, lambda out: b"ready." in out)


def host_worker(broker_url, public_url, name: str, *options: str, **env) -> subprocess.Popen:
    """A host agent as an operator starts one: `celery worker --host-name NAME OPTIONS`."""
    argv = [CELERY, "-A", "workers", "worker", "--host-name", name, *options, "-c", "1"]
    argv += ["-n", f"agent-{name}@%h", "--loglevel", "INFO"]
    service = {**service_env(broker_url, name, public_url), **env}
    return start_service(f"worker-{name}", argv, service, lambda out: b"ready." in out)


def kill_worker(proc: subprocess.Popen) -> None:
    """SIGKILL a worker and its pool processes (not the editors they launched)."""
    import psutil

    pool = [c for c in psutil.Process(proc.pid).children() if "celery" in " ".join(c.cmdline())]
    for pid in [proc.pid, *(c.pid for c in pool)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(10)


def listening(port: int) -> bool:
    """Something accepts connections on loopback at `port`."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
