"""What this machine offers to notebooks: CPUs, memory, disk and GPUs (NVML).

Hosts without GPUs, or without the NVIDIA driver, are CPU hosts, not errors.
"""

import logging
import os
import shutil
from pathlib import Path

import psutil
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

log = logging.getLogger(__name__)
GIB = 1024**3


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def read_gpus() -> list[dict]:
    """The GPUs NVML reports: index, UUID, model and memory. A GPU NVML cannot
    read (fallen off the bus, ...) is left out and logged, never offered."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.info("no NVIDIA GPUs usable here (%s): this is a CPU host", exc)
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                gpus.append(
                    {
                        "index": index,
                        # /dev/nvidia<minor> is this GPU's device node.
                        "minor": int(pynvml.nvmlDeviceGetMinorNumber(handle)),
                        "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
                        "model": _text(pynvml.nvmlDeviceGetName(handle)),
                        "memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                    }
                )
            except pynvml.NVMLError as exc:
                log.error("GPU %d cannot be read through NVML (%s): not offered", index, exc)
        return gpus
    except pynvml.NVMLError as exc:
        log.error("NVML cannot count the GPUs (%s): offering none", exc)
        return []
    finally:
        pynvml.nvmlShutdown()


def parse_labels(raw: str, source: str = "NBCLOUD_HOST_LABELS") -> dict[str, str]:
    """`k=v,k=v` -> {k: v}; anything else is refused naming `source`."""
    labels = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ImproperlyConfigured(
                f"{source}={raw!r}: {item!r} is not key=value; write labels as k=v,k2=v2"
            )
        labels[key.strip()] = value.strip()
    return labels


def read_inventory(workspaces_dir: Path, labels: dict[str, str] | None = None) -> dict:
    """What this host offers: all it has, unless NBCLOUD_HOST_CPUS / _MEMORY_GIB /
    _DISK_GIB say less (room kept for the system, or a host of a chosen size)."""
    workspaces_dir.mkdir(parents=True, exist_ok=True)
    return {
        "cpus": settings.NBCLOUD_HOST_CPUS or os.cpu_count() or 1,
        "memory_bytes": settings.NBCLOUD_HOST_MEMORY_GIB * GIB or psutil.virtual_memory().total,
        "disk_bytes": settings.NBCLOUD_HOST_DISK_GIB * GIB
        or shutil.disk_usage(workspaces_dir).total,
        "gpus": read_gpus(),
        "labels": parse_labels(settings.NBCLOUD_HOST_LABELS) if labels is None else labels,
    }
