"""The web process under load holds a bounded number of database connections (its
pool, or one per turn), and serves an overload in turn instead of refusing it."""

import concurrent.futures
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import requests

from support.services import ROOT, service_env, start_service, stop_service
from workers.runtimes.process import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _web_process(url: str) -> psutil.Process:
    port = urlsplit(url).port
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
            return psutil.Process(conn.pid)
    raise AssertionError(f"nothing listens on {port}")


def _database_connections(process: psutil.Process, port: int) -> int:
    return sum(1 for c in process.net_connections(kind="tcp") if c.raddr and c.raddr.port == port)


def test_concurrent_api_requests_share_a_bounded_pool_of_database_connections(
    platform_server, alice
):
    from django.conf import settings

    database_port = int(settings.DATABASES["default"].get("PORT") or 5432)
    if not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        pytest.skip("connections are counted on PostgreSQL (DATABASE_URL=postgres://...)")
    web = _web_process(platform_server)
    headers = {"Authorization": f"Bearer {alice[1]}"}

    def get(_):
        return requests.get(
            f"{platform_server}/api/v1/projects/alpha/quota/", headers=headers, timeout=60
        ).status_code

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(get, range(200)))

    assert set(statuses) == {200}, statuses
    # With persistent connections under ASGI, each request's thread left one open
    # (about one per request, 60 s each): 100 requests exhausted PostgreSQL. Now
    # they are closed after each request, or come from a pool (NBCLOUD_WEB_DB_POOL),
    # whatever the number of requests in flight.
    assert _database_connections(web, database_port) <= (settings.NBCLOUD_WEB_DB_POOL or 2) < 20


@pytest.fixture
def web_with_turns(django_db_setup, broker_url, worker_host, request):
    """A second web process on the test database with its own NBCLOUD_WEB_MAX_REQUESTS
    and NBCLOUD_WEB_QUEUE_TIMEOUT (the marker's arguments)."""
    max_requests, queue_timeout = request.param
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = service_env(broker_url, worker_host, url)
    env |= {"NBCLOUD_WEB_MAX_REQUESTS": str(max_requests)}
    env |= {"NBCLOUD_WEB_QUEUE_TIMEOUT": str(queue_timeout)}
    argv = [str(Path(sys.executable).parent / "uvicorn"), "nbcloud.asgi:application"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--app-dir", str(ROOT / "platform")]
    proc = start_service(f"web-turns-{port}", argv, env, lambda out: b"Uvicorn running" in out)
    yield url, psutil.Process(proc.pid)
    stop_service(proc)


def _burst(url: str, token: str, requests_: int, threads: int) -> list[requests.Response]:
    headers = {"Authorization": f"Bearer {token}"}

    def get(_):
        return requests.get(f"{url}/api/v1/projects/alpha/quota/", headers=headers, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(get, range(requests_)))


@pytest.mark.parametrize("web_with_turns", [(2, 60)], indirect=True)
def test_an_overloaded_web_serves_in_turn_with_no_more_connections_than_turns(
    web_with_turns, alice
):
    from django.conf import settings

    if not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        pytest.skip("connections are counted on PostgreSQL (DATABASE_URL=postgres://...)")
    url, web = web_with_turns
    port = int(settings.DATABASES["default"].get("PORT") or 5432)
    peak, done = 0, threading.Event()

    def watch():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _database_connections(web, port))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        answers = _burst(url, alice[1], 120, 30)
    finally:
        done.set()
        watcher.join()
    # 30 clients at once against 2 turns: every one served, none refused, and the
    # database saw at most one connection per turn (before: one per request in flight).
    assert [a.status_code for a in answers] == [200] * 120
    assert 1 <= peak <= 2, peak


@pytest.mark.parametrize("web_with_turns", [(1, 0.001)], indirect=True)
def test_a_request_that_waits_too_long_for_its_turn_is_a_503_to_retry(web_with_turns, alice):
    url, _ = web_with_turns
    answers = _burst(url, alice[1], 40, 20)
    busy = [a for a in answers if a.status_code == 503]
    assert {a.status_code for a in answers} == {200, 503}, [a.status_code for a in answers]
    assert all(a.headers["Retry-After"] == "5" for a in busy)
    assert "NBCLOUD_WEB_MAX_REQUESTS" in busy[0].json()["detail"]
