from django.conf import settings

from .base import Endpoint, LaunchSpec, Runtime, StartError
from .process import ProcessRuntime

RUNTIMES: dict[str, type[Runtime]] = {"process": ProcessRuntime}


def get_runtime(spec: LaunchSpec, state: dict | None = None) -> Runtime:
    return RUNTIMES[settings.NBCLOUD_RUNTIME](spec, state)


__all__ = ["Endpoint", "LaunchSpec", "Runtime", "StartError", "get_runtime", "RUNTIMES"]
