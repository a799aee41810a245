"""A host of its own in region BHS (only it serves that region here) and its workers,
started and killed at will: for a failover on the process runtime (`failover_host`,
`workers`) and on the docker runtime (`docker_host`, `docker_workers`)."""

import pytest
from django.conf import settings

from nbcloud.hosts import services as host_services
from nbcloud.hosts.inventory import read_inventory
from support.services import start_worker, stop_service

REGION = "BHS"


def _register(name: str, runtime: str):
    return host_services.register(
        name, REGION, read_inventory(settings.NBCLOUD_WORKSPACES_DIR), runtime
    )


def _workers(broker_url: str, public_url: str, host: str, **base_env):
    """`start(**env)` starts one more worker of `host`; those still alive stop at the end."""
    started = []

    def start(**env):
        proc = start_worker(
            broker_url,
            host,
            public_url,
            name=f"{host}-{len(started)}",
            env={"NBCLOUD_HOST_REGION": REGION, **base_env, **env},
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            stop_service(proc)


@pytest.fixture
def failover_host(transactional_db):
    return _register("failover", "process")


@pytest.fixture
def workers(broker_url, public_url, failover_host):
    yield from _workers(broker_url, public_url, failover_host.name)


@pytest.fixture
def docker_host(transactional_db, docker_image):
    return _register("failover-docker", "docker")


@pytest.fixture
def docker_workers(broker_url, public_url, docker_host):
    yield from _workers(broker_url, public_url, docker_host.name, NBCLOUD_RUNTIME="docker")
