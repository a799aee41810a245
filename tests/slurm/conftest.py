"""A host that is the one-node Slurm cluster of tests/support/slurm.py, in region
BHS (only it serves that region here), and its workers, started and killed at will."""

import pytest

from support.services import start_worker, stop_service

REGION = "BHS"
HOST = "slurm"


@pytest.fixture
def slurm_workers(broker_url, public_url, slurm_idle, transactional_db):
    """`start()` starts one more worker of host `slurm` (it registers the host) for
    partition `nb` (`start(partition="far")`: the far node's); those still alive stop
    at the end."""
    started = []

    def start(partition: str = "nb"):
        proc = start_worker(
            broker_url,
            HOST,
            public_url,
            name=f"{HOST}-{len(started)}",
            env={
                "NBCLOUD_HOST_REGION": REGION,
                "NBCLOUD_RUNTIME": "slurm",
                "NBCLOUD_HEARTBEAT_INTERVAL": "2",
                "NBCLOUD_SLURM_PARTITION": partition,
                **slurm_idle.job_env,
            },
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            stop_service(proc)
