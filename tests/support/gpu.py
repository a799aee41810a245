"""NVML answering from the readings of a real H100 (tests/fixtures/gpu/h100-80gb/):
NVML's values, cross-checked with `nvidia-smi --query-gpu` on the same machine."""

import csv
import json

import pynvml

from support.paths import FIXTURES

H100 = FIXTURES / "gpu" / "h100-80gb"
MIB = 1024**2


def nvml_readings() -> dict:
    return json.loads((H100 / "nvml.json").read_text())


def nvidia_smi_query() -> list[dict]:
    with open(H100 / "nvidia-smi-query.csv") as f:
        return [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(f)]


def nvml_from_readings(monkeypatch) -> tuple[list, list]:
    """pynvml answering from the H100's readings (until the test ends).

    Returns the devices (append an NVMLError for a GPU that cannot be read)
    and the init/shutdown calls made.
    """
    devices, calls = nvml_readings()["devices"], []

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
        "nvmlDeviceGetMinorNumber": lambda h: device(h)["index"],
        "nvmlDeviceGetMemoryInfo": memory_info,
    }
    for name, fake in fakes.items():
        monkeypatch.setattr(pynvml, name, fake)
    return devices, calls
