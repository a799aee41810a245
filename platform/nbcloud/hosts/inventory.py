"""What this machine offers to notebooks: CPUs, memory, disk and GPUs (NVML).

Hosts without GPUs, or without the NVIDIA driver, are CPU hosts, not errors.
"""

import logging
import os
import shutil
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


def read_gpus() -> list[dict]:
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
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            gpus.append(
                {
                    "index": index,
                    "uuid": uuid.decode() if isinstance(uuid, bytes) else uuid,
                    "model": name.decode() if isinstance(name, bytes) else name,
                    "memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                }
            )
        return gpus
    finally:
        pynvml.nvmlShutdown()


def read_inventory(workspaces_dir: Path) -> dict:
    workspaces_dir.mkdir(parents=True, exist_ok=True)
    return {
        "cpus": os.cpu_count() or 1,
        "memory_bytes": psutil.virtual_memory().total,
        "disk_bytes": shutil.disk_usage(workspaces_dir).total,
        "gpus": read_gpus(),
    }
