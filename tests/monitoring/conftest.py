"""A host worker for the monitoring tests: it samples every 2 s and serves its
notebook metrics on a port of its own (so that tests running beside it on
this machine cannot answer in its place)."""

import pytest

from support.services import start_worker, stop_service
from workers.runtimes.process import free_port

SAMPLE_INTERVAL = 2


@pytest.fixture(scope="session")
def worker_metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def monitored_worker(django_db_setup, broker_url, worker_host, public_url, worker_metrics_port):
    proc = start_worker(
        broker_url,
        worker_host,
        public_url,
        queues=["control", "billing"],
        name="monitored",
        env={
            "NBCLOUD_WORKER_METRICS_PORT": str(worker_metrics_port),
            "NBCLOUD_SAMPLE_INTERVAL": str(SAMPLE_INTERVAL),
            "NBCLOUD_LIMITS_CHECK_INTERVAL": "3",
        },
    )
    yield proc
    stop_service(proc)
