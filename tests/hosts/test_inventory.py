"""A host's inventory: GPUs through NVML, CPUs, memory, disk, labels.

No GPU here: the NVML path runs on the readings of a real H100 (NVML values,
cross-checked with `nvidia-smi --query-gpu` of the same machine) from
tests/fixtures/gpu/h100-80gb/; only pynvml's calls are replaced, and
they answer from those readings.
"""

import pynvml
import pytest
from django.core.exceptions import ImproperlyConfigured

from nbcloud.hosts import services
from nbcloud.hosts.inventory import parse_labels, read_gpus, read_inventory
from nbcloud.notebooks.states import State
from support.factories import GIB, fresh, make_queued_notebook
from support.gpu import H100, MIB, nvidia_smi_query, nvml_from_readings, nvml_readings


@pytest.fixture
def nvml_calls(monkeypatch):
    devices, calls = nvml_from_readings(monkeypatch)
    yield devices
    assert calls[-1] == "shutdown"  # NVML is always let go


def test_nvml_readings_of_an_h100(nvml_calls):
    (smi,) = nvidia_smi_query()
    assert read_gpus() == [
        {
            "index": 0,
            "minor": 0,  # nvidia-smi -q: <minor_number>0</minor_number>
            "uuid": smi["uuid"],
            "model": smi["name"],
            "memory_bytes": int(smi["memory.total [MiB]"].split()[0]) * MIB,
        }
    ]
    assert "NVIDIA H100 80GB HBM3" in (H100 / "nvidia-smi-L.txt").read_text()


def test_a_gpu_nvml_cannot_read_is_not_offered(nvml_calls, caplog):
    nvml_calls.append(pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST))
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
def test_an_h100_host_from_nvml_takes_h100_notebooks_only(nvml_calls, alpha, tmp_path, settings):
    settings.NBCLOUD_HOST_CPUS, settings.NBCLOUD_HOST_MEMORY_GIB = 32, 256
    settings.NBCLOUD_HOST_DISK_GIB = 1000
    host = services.register("h100-1", "GRA", read_inventory(tmp_path), "process")
    assert host.gpu_uuids == [nvml_readings()["devices"][0]["uuid"]]

    v100 = make_queued_notebook(alpha, "v100", gpu=1)  # ai1-1-gpu: Tesla V100S
    h100 = make_queued_notebook(alpha, "h100", gpu=1, flavor="h100-1-gpu")
    assert services.place_queued() == [(str(h100.pk), "h100-1")]
    assert fresh(h100).gpu_uuids == host.gpu_uuids
    v100 = fresh(v100)
    assert v100.state == State.QUEUED
    assert "position 1 in region GRA for 1 GPU" in v100.info_message
