"""The docker runtime beyond the contract: adoption by name, limits, user, labels,
networks and GPU requests, on a real Docker Engine."""

import os
import uuid
from pathlib import Path

import pytest
import requests
from django.conf import settings

from workers.lifecycle import wait_ready
from workers.runtimes import StartError
from workers.runtimes.base import Mount
from workers.runtimes.docker import (
    LABEL_HOST,
    LABEL_NOTEBOOK,
    LABEL_PROJECT,
    DockerRuntime,
    container_config,
    container_name,
)

pytestmark = pytest.mark.e2e
GIB = 1024**3
# As NVML reports them (tests/fixtures/gpu): what the scheduler assigns.
H100_UUIDS = (
    "GPU-5d2a1d7e-7b39-4e0b-9f4b-6d1c0d3f2a11",
    "GPU-0c8e7f52-1b77-4a5e-8a43-2f9e6c4b7d90",
)


@pytest.fixture
def docker_spec(make_spec, docker_image):
    return lambda **overrides: make_spec(**{"image": docker_image, **overrides})


@pytest.fixture
def running(docker_spec, base_dir):
    data = base_dir / "volume"
    data.mkdir()
    (data / "in.txt").write_text("from a volume")
    volume = Mount(str(data), "/workspace/data", read_only=True)
    runtime = DockerRuntime(docker_spec(cpus=1, memory_bytes=GIB, mounts=(volume,)))
    runtime.start()
    yield runtime
    runtime.stop(5)


def test_repeated_start_adopts_the_container_instead_of_making_a_second(running, docker_containers):
    # A redelivered start whose predecessor died before saving any state.
    again = DockerRuntime(running.spec)
    assert again.start() == running.endpoint
    assert again.get_state() == running.get_state()
    containers = docker_containers(running.spec.notebook_id)
    assert [c.name for c in containers] == [container_name(running.spec.notebook_id)]


def test_container_has_the_limits_user_labels_and_workspace(running, docker_api, settings):
    wait_ready(running, 60)
    container = docker_api.containers.get(running.get_state()["container_id"])
    host_config = container.attrs["HostConfig"]
    assert host_config["NanoCpus"] == 1_000_000_000
    assert host_config["Memory"] == GIB
    assert host_config["MemorySwap"] == GIB
    assert host_config["ShmSize"] == GIB // 2
    assert host_config["CapDrop"] == ["ALL"]
    spec = running.spec
    assert container.attrs["Config"]["User"] == f"{spec.uid}:{spec.uid}"
    assert container.labels[LABEL_NOTEBOOK] == spec.notebook_id
    assert container.labels[LABEL_PROJECT] == "alpha"
    assert container.labels[LABEL_HOST] == settings.NBCLOUD_HOST_NAME

    code, output = container.exec_run(["sh", "-c", "id -u && echo hi > /workspace/made.txt"])
    assert (code, output.split()) == (0, [str(spec.uid).encode()])
    code, output = container.exec_run(["sh", "-c", "cat data/in.txt && touch data/x"])
    assert code != 0 and output.startswith(b"from a volume")
    assert b"Read-only file system" in output
    made = spec.workspace / "made.txt"
    assert made.read_text() == "hi\n" and made.stat().st_uid == spec.uid
    stats = running.stats()
    assert stats["memory_limit_bytes"] == GIB
    assert 0 < stats["memory_bytes"] < GIB


def test_user_network_publishes_the_editor_port(docker_spec, docker_api, settings):
    network = docker_api.networks.create(f"nbcloud-test-{uuid.uuid4().hex[:8]}")
    settings.NBCLOUD_DOCKER_NETWORK = network.name
    runtime = DockerRuntime(docker_spec())
    try:
        endpoint = runtime.start()
        assert endpoint.host == settings.NBCLOUD_DOCKER_PUBLISH_IP
        wait_ready(runtime, 60)
        status = requests.get(
            endpoint.url + "api/status",
            headers={"Authorization": f"token {runtime.spec.secret}"},
            timeout=5,
        )
        assert status.status_code == 200
        # A fresh runtime reads the published port back from the container.
        assert DockerRuntime(runtime.spec).start() == endpoint
        assert runtime.stats()["network_rx_bytes"] > 0
    finally:
        runtime.stop(5)
        network.remove()


def test_missing_image_is_a_start_error_naming_the_fix(docker_spec, docker_api):
    runtime = DockerRuntime(docker_spec(image="nbcloud/no-such-env:0"))
    with pytest.raises(StartError, match="not installed") as failure:
        runtime.check_environment("conda", "py311")
    assert "manage.py buildimages conda:py311" in str(failure.value)


def test_gpus_are_requested_by_uuid_and_cpus_capped_at_the_host():
    spec = _spec(gpu_uuids=H100_UUIDS, cpus=60, memory_bytes=400 * GIB)
    config = container_config(spec, 8888, host_cpus=16)
    (request,) = config["device_requests"]
    assert request["DeviceIDs"] == list(H100_UUIDS)
    assert request["Capabilities"] == [["gpu"]]
    assert request["Count"] == 0  # exactly the listed devices, not "all"
    assert config["nano_cpus"] == 16 * 10**9
    assert config["mem_limit"] == 400 * GIB
    assert "CUDA_VISIBLE_DEVICES" not in config["environment"]
    assert "device_requests" not in container_config(_spec(), 8888, host_cpus=16)


def _spec(**overrides):
    from workers.runtimes import LaunchSpec

    notebook_id = str(uuid.uuid4())
    fields = {
        "notebook_id": notebook_id,
        "editor_id": "jupyterlab",
        "env_dir": Path("/unused"),
        "workspace": Path(os.devnull),
        "uid": settings.NBCLOUD_SANDBOX_UID_BASE + 3_200_000,
        "secret": "s",
        "base_url": f"/notebooks/{notebook_id}/",
        "image": "nbcloud/conda:py311",
    }
    return LaunchSpec(**{**fields, **overrides})
