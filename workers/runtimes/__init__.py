from django.conf import settings

from .base import Endpoint, LaunchSpec, Runtime, StartError
from .docker import DockerRuntime
from .process import ProcessRuntime
from .slurm import SlurmRuntime

RUNTIMES: dict[str, type[Runtime]] = {
    "process": ProcessRuntime,
    "docker": DockerRuntime,
    "slurm": SlurmRuntime,
}


def get_runtime(spec: LaunchSpec, state: dict | None = None, name: str | None = None) -> Runtime:
    """The runtime called name (a host's), this host's (NBCLOUD_RUNTIME) by default."""
    return RUNTIMES[name or settings.NBCLOUD_RUNTIME](spec, state)


__all__ = ["Endpoint", "LaunchSpec", "Runtime", "StartError", "get_runtime", "RUNTIMES"]
