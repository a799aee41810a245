"""Idle and runtime limits, and the host services a worker starts (the sampler).

Beat sends `notebooks.check_limits` (control) every
NBCLOUD_LIMITS_CHECK_INTERVAL seconds. It enforces `max_runtime` from the
database alone (stop, or restart on the same host with the workspace in place
when `timeout_auto_restart` is set), and asks each host with notebooks that
have an idle timeout to check them (`hosts.check_idle`), since only the host
reaches its editors.

A notebook is busy while a kernel executes, a terminal or VS Code saw use,
its GPUs or CPUs work above NBCLOUD_IDLE_GPU_PERCENT / NBCLOUD_IDLE_CPU_CORES
(the sampler's readings), a client reached it through the gateway, or its
owner asked to keep it alive. A computation left running with the browser
closed keeps its kernel busy: it is not idle. NBCLOUD_IDLE_WARNING seconds
(at most half the timeout) before the stop, an IDLE_WARNING event says when it
will stop.
"""

import contextlib
import logging
from datetime import datetime, timedelta

import requests
from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from nbcloud.notebooks import services
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import InfoCode, State

from . import ledger, lifecycle, volumes, workspace
from .routes import Queue
from .runtimes import StartError
from .runtimes.editors import readiness_headers

log = logging.getLogger(__name__)
PROBE_TIMEOUT = 5
BUSY_KERNEL_STATES = frozenset({"busy", "starting"})


def idle_timeout(notebook: Notebook) -> int | None:
    return notebook.idle_timeout or notebook.project.default_idle_timeout


def max_runtime(notebook: Notebook) -> int | None:
    return notebook.max_runtime or notebook.project.default_max_runtime


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{hours} h"] if hours else []
    if minutes:
        parts.append(f"{minutes} min")
    if seconds or not parts:
        parts.append(f"{seconds} s")
    return " ".join(parts)


# Control side.


def check_limits(now: datetime | None = None) -> None:
    now = now or timezone.now()
    idle_hosts = set()
    running = Notebook.objects.select_related("project", "host").filter(
        state=State.RUNNING, host__isnull=False
    )
    for notebook in running:
        limit = max_runtime(notebook)
        started = notebook.last_started_at
        if limit and started and now >= started + timedelta(seconds=limit):
            _enforce_max_runtime(notebook, limit)
        elif idle_timeout(notebook):
            idle_hosts.add(notebook.host.name)
    for host in sorted(idle_hosts):
        check_idle_task.delay(host=host)
    _resend_lost_restarts(now)


def _enforce_max_runtime(notebook: Notebook, limit: int) -> None:
    try:
        if notebook.timeout_auto_restart:
            with transaction.atomic():
                services.transition(
                    notebook,
                    State.RESTARTING,
                    actor=services.SYSTEM,
                    code=InfoCode.TIMEOUT_RESTART,
                    message=f"Reached its max_runtime ({_duration(limit)}); restarting with "
                    "its workspace (timeout_auto_restart).",
                )
                restart_task.delay_on_commit(str(notebook.pk), host=notebook.host.name)
        else:
            services.stop(
                notebook,
                actor=services.SYSTEM,
                code=InfoCode.MAX_RUNTIME,
                message=f"Reached its max_runtime ({_duration(limit)}); stopped, the workspace "
                "is saved.",
            )
    except services.InvalidState:
        pass  # a user action got there first


def _resend_lost_restarts(now: datetime) -> None:
    stuck_before = now - timedelta(seconds=settings.NBCLOUD_STUCK_AFTER)
    for pk, host in Notebook.objects.filter(
        state=State.RESTARTING, host__isnull=False, state_changed_at__lt=stuck_before
    ).values_list("pk", "host__name"):
        restart_task.delay(str(pk), host=host)


# Host side.


def restart(notebook_id: str, host: str) -> None:
    """Restart the editor in place: same host, same workspace, capacity kept."""
    notebook = lifecycle._load(notebook_id, host, State.RESTARTING)
    if notebook is None:
        return
    runtime = lifecycle.runtime_for(notebook)
    try:
        runtime.stop(settings.NBCLOUD_EDITOR_STOP_TIMEOUT)
        if notebook.volumes:  # written data goes out, and the mounts come back
            volumes.push(notebook)
            mounts = volumes.prepare(notebook, workspace.local_path(notebook))
            runtime = lifecycle.runtime_for(notebook, mounts)
        runtime.load_state({})
        runtime.start()
        services.save_runtime_state(notebook, runtime.get_state())
        ledger.record(host, notebook, runtime.get_state())
        lifecycle.wait_ready(runtime, settings.NBCLOUD_EDITOR_READY_TIMEOUT)
    except Exception as exc:
        log.exception("notebook %s failed to restart on %s", notebook_id, host)
        message = exc.user_message if isinstance(exc, StartError) else "Internal error."
        try:
            services.transition(
                notebook,
                State.STOPPING,
                actor=services.SYSTEM,
                code=InfoCode.START_FAILED,
                message=f"The restart failed: {message}",
            )
        except services.InvalidState:
            return
        lifecycle.stop(notebook_id, host)  # saves the workspace, ends FAILED
        return
    # Stopped meanwhile: its stop task stops this editor.
    with contextlib.suppress(services.InvalidState):
        services.mark_running(
            notebook, editor_url=runtime.endpoint.origin, runtime_state=runtime.get_state()
        )


def check_idle(host: str, now: datetime | None = None) -> None:
    running = Notebook.objects.select_related("project", "host").filter(
        host__name=host, state=State.RUNNING
    )
    for notebook in running:
        timeout = idle_timeout(notebook)
        if not timeout:
            continue
        try:
            seen = last_activity(notebook, now or timezone.now())
        except Exception:
            log.exception("notebook %s: activity probe failed; counted as busy", notebook.pk)
            seen = now or timezone.now()
        apply_idle_timeout(notebook, seen, timeout, now or timezone.now())


def last_activity(notebook: Notebook, now: datetime) -> datetime | None:
    """The latest sign of use the host sees (now, while something works)."""
    signs = [_editor_activity(notebook, now), _resource_activity(notebook, now)]
    signs = [sign for sign in signs if sign is not None]
    return max(signs) if signs else None


def _editor_activity(notebook: Notebook, now: datetime) -> datetime | None:
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


def _resource_activity(notebook: Notebook, now: datetime) -> datetime | None:
    """The latest sample that shows the GPUs or CPUs at work, since the last check."""
    window = now - timedelta(
        seconds=settings.NBCLOUD_LIMITS_CHECK_INTERVAL + 2 * settings.NBCLOUD_SAMPLE_INTERVAL
    )
    for sample in notebook.samples.filter(at__gte=window).order_by("-at"):
        gpu_busy = any(
            gpu["utilization_percent"] > settings.NBCLOUD_IDLE_GPU_PERCENT for gpu in sample.gpus
        )
        cpu_busy = (sample.cpu_cores or 0) > settings.NBCLOUD_IDLE_CPU_CORES
        if gpu_busy or cpu_busy:
            return sample.at
    return None


def apply_idle_timeout(
    notebook: Notebook, seen: datetime | None, timeout: int, now: datetime
) -> None:
    if seen is not None:
        record_activity(notebook, seen)
    since = max(t for t in (notebook.last_activity_at, notebook.last_started_at) if t)
    idle_for = (now - since).total_seconds()
    stop_at = since + timedelta(seconds=timeout)
    lead = min(settings.NBCLOUD_IDLE_WARNING, timeout / 2)
    try:
        if idle_for >= timeout:
            services.stop(
                notebook,
                actor=services.SYSTEM,
                code=InfoCode.IDLE_TIMEOUT,
                message=f"Idle for {_duration(idle_for)} (idle_timeout {_duration(timeout)}); "
                "stopped, the workspace is saved.",
            )
        elif idle_for >= timeout - lead:
            _warn(notebook, since, stop_at)
    except services.InvalidState:
        pass  # a user action got there first


def record_activity(notebook: Notebook, at: datetime) -> None:
    """Move last_activity_at forward (never back); clear a pending idle warning."""
    if notebook.last_activity_at and notebook.last_activity_at >= at:
        return
    Notebook.objects.filter(pk=notebook.pk).update(last_activity_at=at)
    notebook.last_activity_at = at
    if notebook.info_code == InfoCode.IDLE_WARNING:
        services.set_info(notebook, InfoCode.RUNNING, "The editor is up.")


def _warn(notebook: Notebook, since: datetime, stop_at: datetime) -> None:
    if notebook.events.filter(code=InfoCode.IDLE_WARNING, at__gte=since).exists():
        return
    message = (
        f"Idle since {since:%Y-%m-%d %H:%M:%S} UTC: it stops at {stop_at:%H:%M:%S} UTC "
        "unless it is used or kept alive (POST .../keepalive/)."
    )
    services.record_event(notebook, InfoCode.IDLE_WARNING, message)
    services.set_info(notebook, InfoCode.IDLE_WARNING, message)


def keepalive(notebook: Notebook) -> Notebook:
    """Postpone the idle stop: the notebook counts as used now."""
    if notebook.state != State.RUNNING:
        raise services.InvalidState(
            f"Notebook {notebook.name!r} is {notebook.state}: only a RUNNING notebook can be "
            "kept alive."
        )
    record_activity(notebook, timezone.now())
    return notebook


# Tasks.


@shared_task(name="notebooks.check_limits", expires=settings.NBCLOUD_LIMITS_CHECK_INTERVAL)
def check_limits_task() -> None:
    check_limits()


@shared_task(name="hosts.check_idle", expires=settings.NBCLOUD_LIMITS_CHECK_INTERVAL)
def check_idle_task(*, host: str) -> None:
    check_idle(host)


@shared_task(name="notebooks.restart")
def restart_task(notebook_id: str, *, host: str) -> None:
    restart(notebook_id, host)


@worker_ready.connect
def start_host_services(sender=None, **kwargs) -> None:
    """A worker that consumes a host's queue (host.<name>) samples that host's notebooks."""
    from .sampler import start_host_sampler

    queues = {q.name for q in sender.app.amqp.queues.consume_from.values()} if sender else set()
    hosts = sorted(
        q.removeprefix(f"{Queue.HOST}.") for q in queues if q.startswith(f"{Queue.HOST}.")
    )
    if hosts:
        start_host_sampler(hosts[0])
