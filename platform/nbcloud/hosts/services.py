"""Hosts: registration, heartbeats, loss, draining, and placing notebooks on them.

Placement policy: first come, first served within a region and a flavor
(notebooks wait in line only behind those asking for the same kind of GPU,
or for CPUs), and
pack: among the READY hosts of the region that fit, take the fullest (fewest
free GPUs, then fewest free vCPUs), so whole hosts stay free for notebooks
that need many GPUs. A notebook reserves, per unit of its flavor, its GPUs
(by UUID, never shared), vCPUs, memory and local storage.

Every placement pass locks the READY hosts (SELECT ... FOR UPDATE, in name
order; SQLite's writer lock does the same) and reads what they hold inside
that lock, so two schedulers racing for the last GPU cannot both take it.
"""

import bisect
import logging
import secrets
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from nbcloud import dispatch
from nbcloud.billing import services as billing
from nbcloud.catalog.services import catalog
from nbcloud.notebooks import services as notebook_services
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import HOST_LOST_STATES, InfoCode, State
from nbcloud.notices import services as notices
from nbcloud.notices.models import Kind

from .models import Host, HostState

log = logging.getLogger(__name__)


def register(name: str, region: str, inventory: dict, runtime: str) -> Host:
    """Create or refresh host `name` with what it offers; a LOST host is READY again."""
    host, created = Host.objects.update_or_create(
        name=name,
        defaults={
            "region": region,
            "runtime": runtime,
            "last_heartbeat_at": timezone.now(),
            **inventory,
        },
    )
    if not created and host.state == HostState.LOST:
        Host.objects.filter(pk=host.pk).update(state=HostState.READY)
        host.state = HostState.READY
    log.info("host %s registered in %s: %s", name, region, inventory)
    dispatch.schedule()  # what waits may fit now
    return host


def heartbeat(name: str) -> Host | None:
    """Host `name` is alive; a LOST one becomes READY again. None: no such host."""
    with transaction.atomic():
        if not Host.objects.filter(name=name).update(last_heartbeat_at=timezone.now()):
            return None
        if Host.objects.filter(name=name, state=HostState.LOST).update(state=HostState.READY):
            log.warning("host %s answers again: READY", name)
            dispatch.schedule()
    return Host.objects.get(name=name)


def drain(host: Host) -> bool:
    """No new notebooks on `host`; those it runs keep running. False: it was not READY."""
    return bool(
        Host.objects.filter(pk=host.pk, state=HostState.READY).update(state=HostState.DRAINING)
    )


def undrain(host: Host) -> bool:
    """A DRAINING host takes notebooks again. False: it was not DRAINING."""
    with transaction.atomic():
        done = Host.objects.filter(pk=host.pk, state=HostState.DRAINING).update(
            state=HostState.READY
        )
        if done:
            dispatch.schedule()
    return bool(done)


def mark_lost(silent_since: datetime) -> list[str]:
    """Mark every host silent since before `silent_since` LOST and move its notebooks.

    The claim is a conditional UPDATE on the heartbeat seen, so a host that
    heart-beats meanwhile is left alone. The next `place_queued` starts the
    moved notebooks elsewhere. Returns the names of the hosts lost.
    """
    lost = []
    silent = Host.objects.filter(
        state__in=[HostState.READY, HostState.DRAINING], last_heartbeat_at__lt=silent_since
    )
    for host in silent:
        with transaction.atomic():
            claimed = Host.objects.filter(
                pk=host.pk, state=host.state, last_heartbeat_at=host.last_heartbeat_at
            ).update(state=HostState.LOST)
            if not claimed:
                continue
            log.warning("host %s lost: no heartbeat since %s", host.name, host.last_heartbeat_at)
            moved = defaultdict(list)
            for notebook in Notebook.objects.select_for_update().filter(host=host):
                before = notebook.state
                _host_lost(notebook, host)
                moved[notebook.project_id].append((notebook, before))
            _tell_host_lost(host, moved)
        lost.append(host.name)
    return lost


def _tell_host_lost(host: Host, moved: dict[int, list[tuple[Notebook, str]]]) -> None:
    """A notice to each project that had notebooks on the lost host, saying what became
    of them."""
    when = host.last_heartbeat_at
    for pairs in moved.values():
        project = pairs[0][0].project
        names = ", ".join(notebook.name for notebook, _ in pairs)
        notices.notify(
            project,
            Kind.HOST_LOST,
            f"Host {host.name} lost: {len(pairs)} notebook(s) affected",
            f"Host {host.name} stopped answering (last heartbeat "
            f"{timezone.localtime(when):%Y-%m-%d %H:%M:%S %Z}). Its notebooks of project "
            f"{project.name} ({names}) start again on another host from their last backup, "
            "or wait QUEUED for capacity; one that was saving its workspace is FAILED with "
            "the last backup kept.",
            {
                "host": {
                    "name": host.name,
                    "region": host.region,
                    "last_heartbeat_at": when.isoformat(),
                },
                "notebooks": [
                    {
                        "id": str(notebook.pk),
                        "name": notebook.name,
                        "was": str(before),
                        "now": str(notebook.state),
                    }
                    for notebook, before in pairs
                ],
            },
            key=f"{host.name}@{when.isoformat()}",
        )


def _host_lost(notebook: Notebook, host: Host) -> None:
    """Release the notebook's capacity on a lost host, billed up to its last heartbeat.

    A live notebook starts again elsewhere from its last backup (RESTARTING,
    then placed or QUEUED keeping its place in line); a stop that was saving
    the workspace ends FAILED with the last backup kept; a delete completes.
    """
    heard = host.last_heartbeat_at
    opened = notebook.intervals.filter(ended_at__isnull=True).values_list("started_at", flat=True)
    if opened:
        billing.close_interval(notebook, at=max(heard, opened[0]))
    when = timezone.localtime(heard).strftime("%Y-%m-%d %H:%M:%S %Z")
    if notebook.state in HOST_LOST_STATES:
        target = State.RESTARTING if notebook.state != State.RESTARTING else State.QUEUED
        message = (
            f"Host {host.name} stopped answering (last heartbeat {when}); starting again on "
            "another host from the last backup."
        )
    elif notebook.state == State.STOPPING:
        target = State.FAILED
        message = (
            f"Host {host.name} stopped answering (last heartbeat {when}) while the workspace "
            "was being saved; the last backup is kept."
        )
    elif notebook.state == State.DELETING:
        target, message = State.DELETED, f"Deleted; host {host.name} is lost with its local data."
    else:
        return
    notebook_services.transition(
        notebook,
        target,
        actor=notebook_services.SYSTEM,
        code=InfoCode.HOST_LOST,
        message=message,
        **{**notebook_services.release_fields(), "last_stopped_at": heard},
    )


@dataclass(frozen=True)
class Need:
    """What a notebook reserves: its flavor's per-unit resources times its units."""

    gpus: int
    cpus: int
    memory: int
    disk: int
    gpu_model: str = ""

    @classmethod
    def of(cls, notebook: Notebook) -> "Need":
        flavor = catalog().flavors[notebook.flavor]
        given = flavor.resources(notebook.units)
        return cls(
            notebook.gpu,
            given.cpus,
            given.memory_bytes,
            given.disk_bytes,
            flavor.gpu_model if notebook.gpu else "",
        )


@dataclass(eq=False)
class Capacity:
    """What a host has left, given the notebooks holding capacity on it."""

    host: Host
    free_cpus: int
    free_memory: int
    free_disk: int
    free_gpus: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, host: Host, notebooks) -> "Capacity":
        capacity = cls(host, host.cpus, host.memory_bytes, host.disk_bytes, list(host.gpu_uuids))
        for notebook in notebooks:
            capacity.take(Need.of(notebook), notebook.gpu_uuids)
        return capacity

    def _gpus_for(self, need: Need) -> list[str]:
        """Free GPUs of the model the flavor names (e.g. "H100 80GB HBM3" in
        NVML's "NVIDIA H100 80GB HBM3"); any model when it names none."""
        if not need.gpus or not need.gpu_model:
            return self.free_gpus
        wanted = need.gpu_model.lower()
        return [uuid for uuid in self.free_gpus if wanted in self._models[uuid]]

    @cached_property
    def _models(self) -> dict[str, str]:
        return {gpu["uuid"]: gpu["model"].lower() for gpu in self.host.gpus}

    def fits(self, need: Need) -> bool:
        return (
            len(self.free_gpus) >= need.gpus
            and self.free_cpus >= need.cpus
            and self.free_memory >= need.memory
            and self.free_disk >= need.disk
            and len(self._gpus_for(need)) >= need.gpus
        )

    def take(self, need: Need, gpu_uuids: list[str] | None = None) -> list[str]:
        """Reserve `need`; returns its GPUs (`gpu_uuids`, else the first free that fit)."""
        if gpu_uuids is None:
            gpu_uuids = self._gpus_for(need)[: need.gpus]
        self.free_gpus = [g for g in self.free_gpus if g not in gpu_uuids]
        self.free_cpus -= need.cpus
        self.free_memory -= need.memory
        self.free_disk -= need.disk
        return list(gpu_uuids)

    @property
    def used(self) -> dict:
        host = self.host
        return {
            "gpus": len(host.gpus) - len(self.free_gpus),
            "cpus": host.cpus - self.free_cpus,
            "memory_bytes": host.memory_bytes - self.free_memory,
            "disk_bytes": host.disk_bytes - self.free_disk,
        }


@dataclass(frozen=True)
class Holding:
    """What a notebook holding capacity on a host is read as: enough for its `Need`."""

    flavor: str
    gpu: int
    cpu: int
    gpu_uuids: list[str]

    @property
    def units(self) -> int:
        return self.gpu or self.cpu


def capacities(hosts: list[Host]) -> dict[int, Capacity]:
    """Each host's capacity left, from the notebooks that hold capacity there (read as
    plain values: a fleet holds thousands)."""
    holding = defaultdict(list)
    rows = (
        Notebook.objects.filter(host__in=[h.pk for h in hosts])
        .order_by()
        .values_list("host_id", "flavor", "gpu", "cpu", "gpu_uuids")
    )
    for host_id, *values in rows:
        holding[host_id].append(Holding(*values))
    return {h.pk: Capacity.of(h, holding[h.pk]) for h in hosts}


def _waiting_message(notebook: Notebook, position: int) -> str:
    unit = "GPU" if notebook.gpu else "CPU"
    return (
        f"Waiting for capacity: position {position} in region {notebook.region} "
        f"for {notebook.units} {unit}{'s' if notebook.units > 1 else ''} of flavor "
        f"{notebook.flavor}."
    )


def _fullest_first(capacity: Capacity) -> tuple[int, int, str]:
    return (len(capacity.free_gpus), capacity.free_cpus, capacity.host.name)


@dataclass(frozen=True)
class Placed:
    """A placement: the host and the GPUs (UUIDs) reserved there."""

    host: Host
    gpu_uuids: tuple[str, ...]


@dataclass(frozen=True)
class Waiting:
    """No host fits now: the notebook's position in its line (region and flavor), from 1."""

    position: int


class Placer:
    """The placement policy over capacities in memory: one decision per notebook.

    Per region the hosts are kept fullest first, so the first that fits is
    the one packing wants; per line (region and flavor), once one notebook
    waits, those behind it wait too: first come, first served.
    """

    def __init__(self, capacities: Iterable[Capacity]):
        self._regions: dict[str, list[Capacity]] = defaultdict(list)
        for capacity in capacities:
            self._regions[capacity.host.region].append(capacity)
        for region in self._regions.values():
            region.sort(key=_fullest_first)
        self._waiting: dict[tuple[str, str], int] = {}

    def decide(self, notebook: Notebook) -> "Placed | Waiting":
        """Where the notebook goes (that capacity now taken), or its position in line."""
        line = (notebook.region, notebook.flavor)
        if line not in self._waiting:
            need = Need.of(notebook)
            region = self._regions[notebook.region]
            # Hosts before this one have too few free GPUs, or just enough and too
            # few vCPUs: skipped without a look, so a full fleet costs no scan.
            first = bisect.bisect_left(region, (need.gpus, need.cpus), key=_fullest_first)
            best = next((c for c in region[first:] if c.fits(need)), None)
            if best is not None:
                region.remove(best)
                gpus = best.take(need)
                bisect.insort(region, best, key=_fullest_first)
                return Placed(best.host, tuple(gpus))
        self._waiting[line] = self._waiting.get(line, 0) + 1
        return Waiting(self._waiting[line])


# What a pass reads of each waiting notebook: enough to decide and to write its change.
_WAITING_FIELDS = (
    "id", "name", "project_id", "state", "flavor", "gpu", "cpu", "region",
    "info_code", "info_message", "queued_at", "created_at",
)  # fmt: skip


def place_queued() -> list[tuple[str, str]]:
    """Place every waiting notebook that fits, in order; returns (notebook id, host).

    Waiting: QUEUED, and RESTARTING without a host (its host was lost); QUEUED
    with a host waits in that host's own scheduler (Slurm), not here. Those
    that do not fit get their position in their region's line in `info`.

    One transaction, whose writes are one statement per table whatever the
    number of notebooks (their changes and placements, their events, the
    intervals opened, the start tasks in the outbox). Passes on several control
    workers take turns on the READY hosts' row locks; a user's action on a
    waiting notebook takes turns with the pass on that notebook's row lock.
    """
    waiting = Notebook.objects.filter(Q(state=State.QUEUED) | Q(state=State.RESTARTING), host=None)
    if not waiting.exists():
        # Nothing waits: nothing to read. A notebook that starts waiting after this
        # look asks for a pass of its own (`dispatch.schedule`).
        return []
    with transaction.atomic():
        hosts = list(
            Host.objects.select_for_update().filter(state=HostState.READY).order_by("name")
        )
        placer = Placer(capacities(hosts).values())
        changes = []
        for notebook in (
            waiting.select_for_update().order_by("queued_at", "created_at").only(*_WAITING_FIELDS)
        ):
            decision = placer.decide(notebook)
            if isinstance(decision, Placed):
                changes.append(
                    notebook_services.Change(
                        notebook,
                        State.STARTING,
                        InfoCode.PLACED,
                        f"Placed on host {decision.host.name}.",
                        notebook_services.Reservation(
                            decision.host.pk,
                            decision.gpu_uuids,
                            # A new secret for every run: whoever could open the
                            # editor before loses it when the notebook restarts.
                            secrets.token_hex(24),
                        ),
                    )
                )
                continue
            message = _waiting_message(notebook, decision.position)
            # Every placement moves those behind it up; a notebook whose line did
            # not move is not written.
            if notebook.state == State.RESTARTING or notebook.info_message != message:
                changes.append(
                    notebook_services.Change(
                        notebook, State.QUEUED, InfoCode.WAITING_FOR_CAPACITY, message
                    )
                )
        applied = notebook_services.transition_all(changes, actor=notebook_services.SYSTEM)
        names = {host.pk: host.name for host in hosts}
        placed = [
            (str(change.notebook.pk), names[change.placement.host_id])
            for change in applied
            if change.placement is not None
        ]
        dispatch.start_all(placed)
    return placed
