"""The host side of a worker: which host it serves, registering it, its
heartbeats, and stopping editors of runs the host no longer holds.

A worker serves a host when started with ``--host-name NAME`` (then it also
consumes ``host.NAME``; ``--region`` and ``--host-labels k=v,...`` go with
it), or when it consumes ``host.<NBCLOUD_HOST_NAME>``: the settings
NBCLOUD_HOST_NAME, NBCLOUD_HOST_REGION and NBCLOUD_HOST_LABELS are the
fallbacks. On start it registers the host with its inventory and sends again
the tasks of its notebooks in flight (STARTING, STOPPING, RESTARTING, DELETING:
a crash or deploy cut them short; tasks are idempotent); then, every
NBCLOUD_HEARTBEAT_INTERVAL seconds, it heart-beats, asks its own queue to
check its editors (a dead one is saved and marked FAILED; a job its scheduler
kept waiting is taken up when it runs), and stops the editors of runs this
host started but no longer holds (a host that was lost and comes
back finds its notebooks started elsewhere: their old editors must not run
twice). A stale run that ended because the host was lost also leaves its
local workspace, which is moved aside (``<workspaces>/.lost/``) so a later
start here restores the newer backup instead.
"""

import logging
import os
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections, connections

from nbcloud import dispatch
from nbcloud.catalog.services import catalog
from nbcloud.dispatch import host_queue
from nbcloud.hosts import services as host_services
from nbcloud.hosts.inventory import parse_labels
from nbcloud.notebooks import reconcile
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import InfoCode

from . import ledger, lifecycle, workspace
from .runtimes import get_runtime, network
from .runtimes.base import StartError
from .ssh_endpoint import HostSshEndpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostIdentity:
    name: str
    region: str
    labels: dict[str, str] = field(default_factory=dict)


def identify(
    consumed: set[str], host_name: str | None, region: str | None, labels: str | None
) -> HostIdentity | None:
    """The host a worker serves, or None for a worker of control queues only."""
    name = host_name or settings.NBCLOUD_HOST_NAME
    if not host_name and host_queue(name) not in consumed:
        return None
    region = region or settings.NBCLOUD_HOST_REGION
    regions = catalog().regions
    if region not in regions:
        raise ImproperlyConfigured(
            f"host {name}: region {region!r} is not in the catalogue; use one of "
            f"{', '.join(sorted(regions))} (--region or NBCLOUD_HOST_REGION)"
        )
    if labels is None:
        return HostIdentity(name, region, parse_labels(settings.NBCLOUD_HOST_LABELS))
    return HostIdentity(name, region, parse_labels(labels, "--host-labels"))


class HostAgent:
    """Registers the host, then heart-beats and sweeps stale editors in a thread."""

    def __init__(self, identity: HostIdentity, interval: float | None = None):
        self.identity = identity
        self.interval = interval or settings.NBCLOUD_HEARTBEAT_INTERVAL
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.ssh = HostSshEndpoint(identity.name)

    def start(self) -> None:
        try:
            lifecycle.register_host(self.identity.name, self.identity.region, self.identity.labels)
            sweep_stale_editors(self.identity.name)
            self.ssh.start()
            # A crash, deploy or reboot cut its work short: take it up now, not when
            # reconcile finds it stuck (NBCLOUD_STUCK_AFTER).
            resumed = reconcile.resume_host(self.identity.name)
            if resumed:
                log.info(
                    "host %s: resuming %d notebook(s) in flight", self.identity.name, len(resumed)
                )
        finally:
            # The pool's processes must not share this thread's connection.
            connections.close_all()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{self.identity.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self.ssh.stop()
        if self._thread is not None:
            self._thread.join(settings.NBCLOUD_EDITOR_STOP_TIMEOUT + 5)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        close_old_connections()
        try:
            if host_services.heartbeat(self.identity.name) is None:
                log.error(
                    "host %s has no row any more: restart its worker to register it again",
                    self.identity.name,
                )
                return
            # Each host checks its own editors, in its pool: the control plane's
            # rounds do not grow with the number of hosts.
            dispatch.check_notebooks(self.identity.name)
            sweep_stale_editors(self.identity.name)
            keep_notebook_rules(self.identity.name)
            self.ssh.register()
        except Exception:
            # A database or broker outage must not end the heartbeats for good.
            log.exception("heartbeat of host %s failed", self.identity.name)
        finally:
            close_old_connections()


def keep_notebook_rules(host: str) -> None:
    """Load the notebooks' network rules again (someone may have flushed the host's
    ruleset): running notebooks stay kept to the public Internet."""
    if os.geteuid() != 0 or not ledger.entries(host):
        return  # no notebook here, or none that this worker could have isolated
    try:
        network.ensure_firewall(force=True)
    except StartError as exc:
        log.error("notebooks' network rules could not be loaded: %s", exc)


def _holds(notebook: Notebook | None, host: str, entry: ledger.Entry) -> bool:
    return (
        notebook is not None
        and notebook.host is not None
        and notebook.host.name == host
        and ledger.run_of(notebook) == entry.run
    )


def sweep_stale_editors(host: str) -> list[str]:
    """Stop the editors of runs this host started and no longer holds; returns notebook ids."""
    stopped = []
    for entry in ledger.entries(host):
        notebook = (
            Notebook.objects.select_related("project", "host").filter(pk=entry.notebook_id).first()
        )
        if _holds(notebook, host, entry):
            continue
        if notebook is None:
            log.warning("editor record of unknown notebook %s on %s dropped", entry.path, host)
            ledger.forget(entry)
            continue
        runtime = get_runtime(lifecycle.launch_spec(notebook), entry.runtime_state)
        if runtime.poll() is None:
            log.warning(
                "host %s: notebook %s runs elsewhere or not at all now; stopping its old editor",
                host,
                notebook.pk,
            )
            lifecycle.stop_discarding(runtime)  # as the worker's own sweep saves nothing
            stopped.append(str(notebook.pk))
        lost = notebook.events.filter(id__gt=entry.last_event_id, code=InfoCode.HOST_LOST)
        if lost.exists():
            _set_aside(notebook)
        ledger.forget(entry)
    return stopped


def _set_aside(notebook: Notebook) -> None:
    """Keep a lost run's local workspace for the operator, out of a later start's way."""
    path = workspace.local_path(notebook)
    if not path.exists():
        return
    aside = path.parent / ".lost" / f"{path.name}-{time.strftime('%Y%m%dT%H%M%S')}"
    aside.parent.mkdir(mode=0o700, exist_ok=True)
    path.rename(aside)
    log.warning("notebook %s: local workspace of a lost run kept in %s", notebook.pk, aside)
