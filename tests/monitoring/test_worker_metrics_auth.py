"""A host worker's metrics port answers only the scrape token, from loopback too.

The port is served for real (the worker's own server on a free loopback port)
and asked over HTTP, as Prometheus asks it. Notebooks share the host, so a
loopback client proves nothing.
"""

import pytest
import requests

from workers import sampler
from workers.runtimes.process import free_port

TOKEN = "worker-scrape-secret"


@pytest.fixture
def serving(settings):
    settings.NBCLOUD_WORKER_METRICS_ADDR = "127.0.0.1"
    settings.NBCLOUD_WORKER_METRICS_PORT = free_port()
    settings.NBCLOUD_METRICS_TOKEN = TOKEN
    server = sampler.serve(sampler.Sampler("metrics-auth", gpus=sampler.Gpus()))
    assert server is not None
    yield f"http://127.0.0.1:{settings.NBCLOUD_WORKER_METRICS_PORT}/metrics"
    server.shutdown()
    server.server_close()


def test_the_worker_port_answers_only_the_scrape_token(serving):
    anonymous = requests.get(serving, timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert "NBCLOUD_METRICS_TOKEN" in anonymous.json()["message"]
    assert "nbcloud_notebook" not in anonymous.text
    for header in ["Bearer wrong", f"Basic {TOKEN}", "Bearer "]:
        wrong = requests.get(serving, headers={"Authorization": header}, timeout=10)
        assert wrong.status_code == 401, header
    scraped = requests.get(serving, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert scraped.status_code == 200, scraped.text
    assert scraped.headers["Content-Type"].startswith("text/plain")
    assert "# TYPE nbcloud_notebook_cpu_usage_cores gauge" in scraped.text


def test_without_a_configured_token_the_worker_port_is_closed(serving, settings):
    settings.NBCLOUD_METRICS_TOKEN = ""
    for headers in [{}, {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Bearer "}]:
        reply = requests.get(serving, headers=headers, timeout=10)
        assert reply.status_code == 403
        assert "Set NBCLOUD_METRICS_TOKEN" in reply.json()["message"]


def test_the_worker_port_tells_how_full_the_hosts_disks_are(serving, settings):
    import shutil

    from support.metrics import samples

    scraped = requests.get(serving, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    found = samples(scraped.text)
    path = str(settings.DATA_DIR)
    labels = (("host", "metrics-auth"), ("path", path))
    usage = shutil.disk_usage(path)
    assert found[("nbcloud_host_filesystem_size_bytes", labels)] == usage.total
    # What the NbcloudDiskFilling and NbcloudDiskAlmostFull alerts divide.
    assert 0 < found[("nbcloud_host_filesystem_free_bytes", labels)] <= usage.total


@pytest.mark.django_db(transaction=True)
def test_the_worker_port_tells_its_hosts_gpus_and_queue(serving, broker_url, alpha):
    from nbcloud.hosts.models import Host
    from nbcloud.monitoring import fleet
    from support.factories import make_notebook
    from support.metrics import samples
    from workers.tasks import check_idle as check_idle_task

    gpus = [{"index": i, "uuid": f"GPU-{i}", "model": "H100", "memory_bytes": 1} for i in range(4)]
    host = Host.objects.create(
        name="metrics-auth", region="GRA", cpus=8, memory_bytes=1, disk_bytes=1, gpus=gpus
    )
    make_notebook(alpha, state="RUNNING", host=host, gpu=1, cpu=0, gpu_uuids=["GPU-2"])
    fleet.broker_redis().delete("host.metrics-auth")
    try:
        for _ in range(2):
            check_idle_task.delay(host="metrics-auth")  # no worker consumes this queue here
        scraped = requests.get(serving, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    finally:
        fleet.broker_redis().delete("host.metrics-auth")
    found = samples(scraped.text)
    assert found[("nbcloud_host_gpus", (("host", "metrics-auth"), ("state", "used")))] == 1
    assert found[("nbcloud_host_gpus", (("host", "metrics-auth"), ("state", "free")))] == 3
    assert found[("nbcloud_queue_length", (("queue", "host.metrics-auth"),))] == 2
