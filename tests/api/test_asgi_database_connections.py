"""The web process under load holds a bounded number of database connections (its pool)."""

import concurrent.futures
from urllib.parse import urlsplit

import psutil
import pytest
import requests

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
