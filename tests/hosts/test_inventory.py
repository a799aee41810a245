"""A host's inventory: GPUs through NVML, CPUs, memory, disk, labels.

No GPU here: the NVML path runs on the readings of a real H100 (NVML values,
cross-checked with `nvidia-smi --query-gpu` of the same machine) from
../shared/fixtures/gpu/h100-80gb/; only pynvml's calls are replaced, and
they answer from those readings.
"""

import csv
import json
from pathlib import Path

import pynvml
import pytest
from django.core.exceptions import ImproperlyConfigured
from host_factories import GIB, fresh, make_notebook

from nbcloud.hosts import services
from nbcloud.hosts.inventory import parse_labels, read_gpus, read_inventory
from nbcloud.notebooks.states import State

H100 = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "gpu" / "h100-80gb"
MIB = 1024**2


def nvml_readings() -> dict:
    return json.loads((H100 / "nvml.json").read_text())


def nvidia_smi_query() -> list[dict]:
    with open(H100 / "nvidia-smi-query.csv") as f:
        return [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.fixture
def fake_nvml(monkeypatch):
    """pynvml answering from recorded devices; returns the list to edit."""
    devices = nvml_readings()["devices"]
    calls = []

    def device(handle):
        if isinstance(handle, pynvml.NVMLError):
            raise handle
        return handle

    def memory_info(handle):
        info = pynvml.c_nvmlMemory_t()
        info.total = device(handle)["memory_total"]
        info.used = device(handle)["memory_used"]
        info.free = info.total - info.used
        return info

    fakes = {
        "nvmlInit": lambda: calls.append("init"),
        "nvmlShutdown": lambda: calls.append("shutdown"),
        "nvmlDeviceGetCount": lambda: len(devices),
        "nvmlDeviceGetHandleByIndex": lambda i: devices[i],
        "nvmlDeviceGetName": lambda h: device(h)["name"],
        "nvmlDeviceGetUUID": lambda h: device(h)["uuid"],
        "nvmlDeviceGetMemoryInfo": memory_info,
    }
    for name, fake in fakes.items():
        monkeypatch.setattr(pynvml, name, fake)
    yield devices
    assert calls[-1] == "shutdown"  # NVML is always let go


def test_nvml_readings_of_an_h100(fake_nvml):
    (smi,) = nvidia_smi_query()
    assert read_gpus() == [
        {
            "index": 0,
            "uuid": smi["uuid"],
            "model": smi["name"],
            "memory_bytes": int(smi["memory.total [MiB]"].split()[0]) * MIB,
        }
    ]
    assert "NVIDIA H100 80GB HBM3" in (H100 / "nvidia-smi-L.txt").read_text()


def test_a_gpu_nvml_cannot_read_is_not_offered(fake_nvml, caplog):
    fake_nvml.append(pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST))
    gpus = read_gpus()
    assert [g["index"] for g in gpus] == [0]
    assert "GPU 1 cannot be read through NVML (GPU is lost): not offered" in caplog.text


def test_without_the_nvidia_driver_this_is_a_cpu_host(caplog):
    # This machine has no NVIDIA driver: the real pynvml fails to load NVML.
    caplog.set_level("INFO")
    assert read_gpus() == []
    assert "this is a CPU host" in caplog.text


def test_inventory_offers_all_unless_told_less(settings, tmp_path):
    everything = read_inventory(tmp_path, {})
    assert everything["cpus"] >= 1 and everything["memory_bytes"] > GIB
    assert everything["disk_bytes"] > GIB and everything["labels"] == {}
    settings.NBCLOUD_HOST_CPUS = 3
    settings.NBCLOUD_HOST_MEMORY_GIB = 12
    settings.NBCLOUD_HOST_DISK_GIB = 100
    settings.NBCLOUD_HOST_LABELS = "rack=r7, ib=true"
    told = read_inventory(tmp_path)
    assert (told["cpus"], told["memory_bytes"], told["disk_bytes"]) == (3, 12 * GIB, 100 * GIB)
    assert told["labels"] == {"rack": "r7", "ib": "true"}


@pytest.mark.parametrize("raw", ["rack", "=r7", "rack=r7,,=x"])
def test_bad_labels_are_refused_naming_the_setting(raw):
    with pytest.raises(ImproperlyConfigured, match="NBCLOUD_HOST_LABELS.*k=v,k2=v2"):
        parse_labels(raw)


@pytest.mark.django_db
def test_an_h100_host_from_nvml_takes_h100_notebooks_only(fake_nvml, alpha, tmp_path, settings):
    settings.NBCLOUD_HOST_CPUS, settings.NBCLOUD_HOST_MEMORY_GIB = 32, 256
    settings.NBCLOUD_HOST_DISK_GIB = 1000
    host = services.register("h100-1", "GRA", read_inventory(tmp_path), "process")
    assert host.gpu_uuids == [nvml_readings()["devices"][0]["uuid"]]

    v100 = make_notebook(alpha, "v100", gpu=1)  # ai1-1-gpu: Tesla V100S
    h100 = make_notebook(alpha, "h100", gpu=1, flavor="h100-1-gpu")
    assert services.place_queued() == [(str(h100.pk), "h100-1")]
    assert fresh(h100).gpu_uuids == host.gpu_uuids
    v100 = fresh(v100)
    assert v100.state == State.QUEUED
    assert "position 1 in region GRA for 1 GPU" in v100.info_message
