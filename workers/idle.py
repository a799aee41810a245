"""The host's side of the idle rule: what this host's editors show of use.

Control (`nbcloud.monitoring.limits`) asks each host with notebooks that have
an idle timeout to look (`hosts.check_idle`), since only the host reaches its
editors; what the host saw goes back to `limits.apply_idle_timeout`, which
warns or stops.
"""

import logging
from datetime import datetime

import requests
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from nbcloud.monitoring import limits
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import State

from . import lifecycle
from .runtimes.editors import readiness_headers

log = logging.getLogger(__name__)
PROBE_TIMEOUT = 5
BUSY_KERNEL_STATES = frozenset({"busy", "starting"})


def check_idle(host: str, now: datetime | None = None) -> None:
    running = Notebook.objects.select_related("project", "host").filter(
        host__name=host, state=State.RUNNING
    )
    for notebook in running:
        timeout = limits.idle_timeout(notebook)
        if not timeout:
            continue
        at = now or timezone.now()
        try:
            seen = last_activity(notebook, at)
        except Exception:
            log.exception("notebook %s: activity probe failed; counted as busy", notebook.pk)
            seen = at
        limits.apply_idle_timeout(notebook, seen, timeout, at)


def last_activity(notebook: Notebook, now: datetime) -> datetime | None:
    """The latest sign of use the host sees (now, while something works)."""
    signs = [editor_activity(notebook, now), limits.resource_activity(notebook, now)]
    signs = [sign for sign in signs if sign is not None]
    return max(signs) if signs else None


def editor_activity(notebook: Notebook, now: datetime) -> datetime | None:
    runtime = lifecycle.runtime_for(notebook)
    endpoint = runtime.endpoint
    if endpoint is None:
        return None
    headers = readiness_headers(runtime.spec)
    if notebook.editor_id == "vscode":
        # code-server's heartbeat: "alive" while a client is connected.
        health = requests.get(endpoint.url + "healthz", timeout=PROBE_TIMEOUT).json()
        if health.get("status") == "alive":
            return now
        beat = health.get("lastHeartbeat")
        return datetime.fromtimestamp(beat / 1000, tz=now.tzinfo) if beat else None
    times = []
    for path in ("api/kernels", "api/terminals"):
        reply = requests.get(endpoint.url + path, headers=headers, timeout=PROBE_TIMEOUT)
        if reply.status_code == 404:  # terminals disabled
            continue
        reply.raise_for_status()
        for item in reply.json():
            if item.get("execution_state") in BUSY_KERNEL_STATES:
                return now
            if item.get("last_activity"):
                times.append(parse_datetime(item["last_activity"]))
    return max((t for t in times if t is not None), default=None)
