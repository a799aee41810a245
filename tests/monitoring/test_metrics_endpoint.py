"""`GET /metrics`: who may read it, and what the fleet series say."""

import pytest
from celery import signals as celery_signals

from nbcloud.hosts.models import Host
from nbcloud.monitoring import fleet
from support.factories import make_notebook
from support.metrics import samples

pytestmark = pytest.mark.django_db


@pytest.fixture
def token(settings):
    settings.NBCLOUD_METRICS_TOKEN = "metrics-secret"
    return "metrics-secret"


def bearer(token: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def scrape(client, token="metrics-secret", **extra) -> dict[tuple, float]:
    reply = client.get("/metrics", **bearer(token), **extra)
    assert reply.status_code == 200, reply.content
    assert reply["Content-Type"].startswith("text/plain")
    return samples(reply.content.decode())


@pytest.fixture(autouse=True)
def _token_for_scrapes(token):
    return token


def test_loopback_needs_the_token_too(client, token):
    refused = client.get("/metrics")  # the test client is 127.0.0.1
    assert refused.status_code == 401
    assert refused["WWW-Authenticate"] == "Bearer"
    assert "NBCLOUD_METRICS_TOKEN" in refused.json()["message"]
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 401
    assert scrape(client, token)
    assert scrape(client, token, REMOTE_ADDR="203.0.113.9")


def test_a_wrong_token_is_refused(client, token):
    for header in ["Bearer nope", f"Basic {token}", "Bearer ", token]:
        reply = client.get("/metrics", HTTP_AUTHORIZATION=header)
        assert reply.status_code == 401, header
        assert reply["WWW-Authenticate"] == "Bearer"


def test_no_token_configured_closes_metrics_and_says_which_setting(client, settings):
    settings.NBCLOUD_METRICS_TOKEN = ""
    for extra in [{}, bearer(""), bearer("anything")]:
        reply = client.get("/metrics", **extra)
        assert reply.status_code == 403
        assert "Set NBCLOUD_METRICS_TOKEN" in reply.json()["message"]


def test_a_bad_network_setting_names_the_variable(monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    from nbcloud.envconf import envnetworks

    monkeypatch.setenv("NBCLOUD_PRIVATE_NETWORKS", "10.0.0.0/8,office")
    with pytest.raises(ImproperlyConfigured, match="NBCLOUD_PRIVATE_NETWORKS.*'office'"):
        envnetworks("NBCLOUD_PRIVATE_NETWORKS", "")


def test_notebooks_are_counted_by_state_and_region(client, alpha):
    make_notebook(alpha, state="RUNNING", region="GRA")
    make_notebook(alpha, state="RUNNING", region="GRA")
    make_notebook(alpha, state="QUEUED", region="BHS")
    make_notebook(alpha, state="DELETED", region="GRA")
    found = scrape(client)
    assert found[("nbcloud_notebooks", (("region", "GRA"), ("state", "RUNNING")))] == 2
    assert found[("nbcloud_notebooks", (("region", "BHS"), ("state", "QUEUED")))] == 1
    assert found[("nbcloud_notebooks", (("region", "GRA"), ("state", "STOPPED")))] == 0
    assert not any(labels == (("region", "GRA"), ("state", "DELETED")) for _, labels in found)


def test_gpus_are_counted_by_region_free_or_used(client, alpha):
    def gpus(n):
        return [
            {"index": i, "uuid": f"GPU-{i}", "model": "H100", "memory_bytes": 1} for i in range(n)
        ]

    host = Host.objects.create(
        name="gpu-1", region="GRA", cpus=64, memory_bytes=1, disk_bytes=1, gpus=gpus(4)
    )
    Host.objects.create(
        name="gpu-2", region="GRA", cpus=64, memory_bytes=1, disk_bytes=1, gpus=gpus(2)
    )
    Host.objects.create(  # a lost host's GPUs are nobody's to use
        name="gpu-3",
        region="GRA",
        cpus=64,
        memory_bytes=1,
        disk_bytes=1,
        gpus=gpus(8),
        state="LOST",
    )
    make_notebook(
        alpha, state="RUNNING", host=host, gpu=3, cpu=0, gpu_uuids=["GPU-0", "GPU-1", "GPU-2"]
    )
    found = scrape(client)
    assert found[("nbcloud_gpus", (("region", "GRA"), ("state", "used")))] == 3
    assert found[("nbcloud_gpus", (("region", "GRA"), ("state", "free")))] == 3
    # Each host's own GPUs are on its worker's port (tests/monitoring/test_worker_metrics_auth.py).
    assert not any(name == "nbcloud_host_gpus" for name, _ in found)


def test_the_control_queues_lengths_come_from_the_broker(client, broker_url):
    from workers.tasks import check_idle as check_idle_task

    Host.objects.create(name="far-away", region="GRA", cpus=1, memory_bytes=1, disk_bytes=1)
    fleet.broker_redis().delete("host.far-away")
    check_idle_task.delay(host="far-away")  # no worker consumes this host's queue
    try:
        found = scrape(client)
        assert ("nbcloud_queue_length", (("queue", "control"),)) in found
        assert ("nbcloud_queue_length", (("queue", "billing"),)) in found
        # A host's queue is told by that host's worker, not once per host here.
        assert ("nbcloud_queue_length", (("queue", "host.far-away"),)) not in found
    finally:
        fleet.broker_redis().delete("host.far-away")


def test_task_failures_are_counted_across_processes(client, broker_url):
    class FailedTask:
        name = "tests.failing"

    key = ("nbcloud_task_failures_total", (("task", "tests.failing"),))
    before = scrape(client).get(key, 0)
    celery_signals.task_failure.send(sender=FailedTask())
    celery_signals.task_failure.send(sender=FailedTask())
    assert scrape(client)[key] == before + 2


def test_histograms_are_cumulative(client, broker_url):
    labels = (("runtime", "tests"),)
    before = scrape(client)
    fleet.observe(fleet.START_DURATION, 3.5, runtime="tests")
    fleet.observe(fleet.START_DURATION, 45, runtime="tests")
    found = scrape(client)

    def grew(name, extra=()):
        key = (f"nbcloud_notebook_start_duration_seconds_{name}", tuple(sorted(labels + extra)))
        return found[key] - before.get(key, 0)

    assert grew("count") == 2
    assert grew("sum") == pytest.approx(48.5)
    assert grew("bucket", (("le", "2.0"),)) == 0
    assert grew("bucket", (("le", "5.0"),)) == 1
    assert grew("bucket", (("le", "60.0"),)) == 2
    assert grew("bucket", (("le", "+Inf"),)) == 2
    assert ("nbcloud_billing_tick_duration_seconds_count", ()) in found


def test_a_broker_that_is_down_leaves_out_broker_series_only(client, monkeypatch):
    import time

    from workers.runtimes.process import free_port

    down = fleet.connect(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    monkeypatch.setattr(fleet, "_client", down)
    began = time.monotonic()
    found = scrape(client)
    assert time.monotonic() - began < 5  # no retries piling up on a dead broker
    assert not any(name == "nbcloud_queue_length" for name, _ in found)
    assert any(name == "nbcloud_notebooks" for name, _ in found)
    fleet.increment(fleet.TASK_FAILURES, task="x")  # recording never raises
    assert found[("nbcloud_broker_up", ())] == 0  # what the NbcloudBrokerDown alert reads
    assert found[("nbcloud_database_up", ())] == 1


def test_hosts_are_counted_and_those_needing_attention_named(client):
    from django.utils import timezone

    beat = timezone.now() - timezone.timedelta(seconds=90)
    for name in ("lost-1", "late-1", "well-1", "well-2"):
        Host.objects.create(name=name, region="GRA", cpus=1, memory_bytes=1, disk_bytes=1)
    Host.objects.filter(name="lost-1").update(state="LOST", last_heartbeat_at=beat)
    Host.objects.filter(name="late-1").update(last_heartbeat_at=beat)  # READY, but silent
    found = scrape(client)
    assert found[("nbcloud_hosts", (("region", "GRA"), ("state", "READY")))] == 3
    assert found[("nbcloud_hosts", (("region", "GRA"), ("state", "LOST")))] == 1
    assert found[("nbcloud_hosts", (("region", "BHS"), ("state", "READY")))] == 0

    def state_of(host):
        return {
            dict(labels)["state"]: found[(name, labels)]
            for name, labels in found
            if name == "nbcloud_host_state" and dict(labels)["host"] == host
        }

    assert state_of("lost-1") == {"READY": 0, "DRAINING": 0, "LOST": 1}
    assert state_of("late-1") == {"READY": 1, "DRAINING": 0, "LOST": 0}
    # Hosts that are well are counted, not named: a scrape does not grow with the fleet.
    assert state_of("well-1") == {} and state_of("well-2") == {}
    for host in ("lost-1", "late-1"):
        heartbeat = found[
            ("nbcloud_host_last_heartbeat_timestamp_seconds", (("host", host), ("region", "GRA")))
        ]
        assert heartbeat == pytest.approx(beat.timestamp())
    assert not any(
        name == "nbcloud_host_last_heartbeat_timestamp_seconds" and ("host", "well-1") in labels
        for name, labels in found
    )


def test_the_oldest_notebook_of_each_waiting_state_is_timed(client, alpha):
    from django.utils import timezone

    make_notebook(
        alpha, state="STARTING", state_changed_at=timezone.now() - timezone.timedelta(minutes=20)
    )
    make_notebook(alpha, state="STARTING")
    make_notebook(
        alpha, state="RUNNING", state_changed_at=timezone.now() - timezone.timedelta(hours=5)
    )
    found = scrape(client)
    oldest = "nbcloud_notebook_oldest_in_state_seconds"
    assert 1200 <= found[(oldest, (("state", "STARTING"),))] < 1260
    assert found[(oldest, (("state", "STOPPING"),))] == 0
    assert not any(name == oldest and ("state", "RUNNING") in labels for name, labels in found)


@pytest.mark.django_db(transaction=True)
def test_a_database_that_is_down_is_said_in_a_series_not_a_failed_scrape(client, broker_url):
    from django.db import connection

    from workers.runtimes.process import free_port

    port = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = free_port()  # nothing listens there
    try:
        found = scrape(client)
    finally:
        connection.close()
        connection.settings_dict["PORT"] = port
    assert found[("nbcloud_database_up", ())] == 0  # what NbcloudDatabaseDown reads
    assert not any(name == "nbcloud_notebooks" for name, _ in found)
    assert found[("nbcloud_broker_up", ())] == 1
    assert ("nbcloud_queue_length", (("queue", "control"),)) in found
