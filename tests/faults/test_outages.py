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

import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
from django.conf import settings

from nbcloud.dispatch.models import OutboxMessage
from nbcloud.hosts.models import Host
from nbcloud.notebooks.models import Notebook
from support.editors import notebook_url
from support.factories import make_notebook
from support.outages import Link, database_port, redis_server
from support.paths import ROOT
from support.services import service_env, start_service, stop_service
from support.waiting import wait_for
from workers.runtimes.process import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

BIN = Path(sys.executable).parent


@pytest.fixture
def web(django_db_setup):
    """Start the platform's web process with the given environment; stopped after."""
    started = []

    def start(broker_url: str, **env) -> str:
        port = free_port()
        argv = [str(BIN / "uvicorn"), "nbcloud.asgi:application", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--app-dir", str(ROOT / "platform")]
        environment = {**service_env(broker_url, "outage", f"http://127.0.0.1:{port}"), **env}
        started.append(
            start_service(f"web-outage-{port}", argv, environment, lambda o: b"running" in o)
        )
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in started:
        stop_service(proc)


@pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"),
    reason="a database server to cut off: PostgreSQL (DATABASE_URL)",
)
def test_an_unreachable_database_is_a_503_with_retry_after_and_then_it_answers(
    web, broker_url, alice
):
    link = Link(database_port())
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


def test_with_the_broker_down_actions_are_kept_and_sent_once_it_is_back(web, alpha, alice):
    port = free_port()
    broker = redis_server(port)
    broker_url = f"redis://127.0.0.1:{port}/0"
    beat_env = {"NBCLOUD_OUTBOX_INTERVAL": "1"}
    base = web(broker_url)
    environment = {**service_env(broker_url, "outage", base), **beat_env}
    control = start_service(
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
        environment,
        lambda out: b"ready." in out,
    )
    beat = start_service(
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
        environment,
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

        broker = redis_server(port)
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
        stop_service(beat)
        stop_service(control)
        broker.terminate()
        broker.wait(10)


def test_the_gateway_keeps_serving_editors_it_admitted_while_the_database_is_away(
    web, broker_url, celery_worker_process, conda_env, this_host, alice, alice_api, bob
):
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        pytest.skip("a database server to cut off: PostgreSQL (DATABASE_URL)")
    link = Link(database_port())
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


def test_a_check_that_expired_while_the_broker_was_away_is_dropped_not_sent(broker_url):
    """Each host asks for a check of its editors at every heartbeat: after an outage,
    those requests are stale and must not flood the queues; an action still goes."""
    import json
    from datetime import timedelta

    from django.utils import timezone

    from nbcloud import dispatch
    from nbcloud.monitoring import fleet

    broker = fleet.broker_redis()
    broker.delete("host.outbox-1")  # no worker consumes this host's queue
    check = OutboxMessage.objects.create(
        name=dispatch.CHECK_NOTEBOOKS, kwargs={"host": "outbox-1"}, options={"expires": 10}
    )
    stop = OutboxMessage.objects.create(
        name=dispatch.STOP,
        args=["5d8a3c1e-0000-4000-8000-000000000001"],
        kwargs={"host": "outbox-1"},
    )
    ten_minutes_ago = timezone.now() - timedelta(minutes=10)
    OutboxMessage.objects.filter(pk__in=[check.pk, stop.pk]).update(created_at=ten_minutes_ago)
    try:
        assert dispatch.flush_outbox() == 1
        waiting = [json.loads(raw) for raw in broker.lrange("host.outbox-1", 0, -1)]
        assert [m["headers"]["task"] for m in waiting] == [dispatch.STOP]
        assert not OutboxMessage.objects.filter(pk__in=[check.pk, stop.pk]).exists()
    finally:
        broker.delete("host.outbox-1")
