"""Hosts: registration, heartbeats, and placing queued notebooks on them.

Placement policy: first come, first served within a region and a kind of
resource (GPU notebooks do not wait behind CPU ones, nor the reverse), and
pack: among the hosts that fit, take the fullest, so whole hosts stay free for
notebooks that need many GPUs. A notebook reserves its GPUs (by UUID), its
vCPUs and its memory; local storage is a limit, not a reservation.
"""

import logging
import secrets
from dataclasses import dataclass, field

from django.db import transaction
from django.utils import timezone

from nbcloud.catalog.services import catalog
from nbcloud.notebooks import services as notebook_services
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import InfoCode, State

from .models import Host, HostState

log = logging.getLogger(__name__)
GIB = 1024**3


def register(name: str, region: str, inventory: dict, runtime: str) -> Host:
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
    return host


@dataclass
class Capacity:
    host: Host
    free_cpus: int
    free_memory: int
    free_gpus: list[str] = field(default_factory=list)

    def needs(self, notebook: Notebook) -> tuple[int, int, int]:
        flavor = catalog().flavors[notebook.flavor]
        units = notebook.units
        return notebook.gpu, flavor.cpus * units, flavor.memory_gib * GIB * units

    def fits(self, notebook: Notebook) -> bool:
        gpus, cpus, memory = self.needs(notebook)
        return len(self.free_gpus) >= gpus and self.free_cpus >= cpus and self.free_memory >= memory

    def take(self, notebook: Notebook) -> list[str]:
        gpus, cpus, memory = self.needs(notebook)
        taken, self.free_gpus = self.free_gpus[:gpus], self.free_gpus[gpus:]
        self.free_cpus -= cpus
        self.free_memory -= memory
        return taken


def _capacities(hosts: list[Host]) -> dict[int, Capacity]:
    capacity = {h.pk: Capacity(h, h.cpus, h.memory_bytes, list(h.gpu_uuids)) for h in hosts}
    for notebook in Notebook.objects.filter(host__in=hosts):
        cap = capacity[notebook.host_id]
        _, cpus, memory = cap.needs(notebook)
        cap.free_cpus -= cpus
        cap.free_memory -= memory
        cap.free_gpus = [g for g in cap.free_gpus if g not in notebook.gpu_uuids]
    return capacity


def place_queued() -> list[tuple[str, str]]:
    """Place every queued notebook that fits, in order; returns (notebook id, host)."""
    from workers.tasks import start_notebook

    placed = []
    with transaction.atomic():
        hosts = list(
            Host.objects.select_for_update().filter(state=HostState.READY).order_by("name")
        )
        capacity = _capacities(hosts)
        queued = (
            Notebook.objects.select_for_update()
            .filter(state=State.QUEUED)
            .order_by("queued_at", "created_at")
        )
        positions: dict[tuple[str, str], int] = {}
        for notebook in queued:
            kind = (notebook.region, "GPU" if notebook.gpu else "CPU")
            candidates = [
                c
                for c in capacity.values()
                if c.host.region == notebook.region and c.fits(notebook)
            ]
            if kind not in positions and candidates:
                best = min(candidates, key=lambda c: (len(c.free_gpus), c.free_cpus, c.host.name))
                gpu_uuids = best.take(notebook)
                notebook_services.transition(
                    notebook,
                    State.STARTING,
                    actor=notebook_services.SYSTEM,
                    code=InfoCode.PLACED,
                    message=f"Placed on host {best.host.name}.",
                    host=best.host,
                    gpu_uuids=gpu_uuids,
                    # A new secret for every run: whoever could open the
                    # editor before loses it when the notebook restarts.
                    editor_secret=secrets.token_hex(24),
                )
                start_notebook.delay_on_commit(str(notebook.pk), host=best.host.name)
                placed.append((str(notebook.pk), best.host.name))
                continue
            positions[kind] = positions.get(kind, 0) + 1
            unit = "GPU" if notebook.gpu else "CPU"
            message = (
                f"Waiting for capacity: position {positions[kind]} in region {notebook.region} "
                f"for {notebook.units} {unit}{'s' if notebook.units > 1 else ''}."
            )
            if notebook.info_message != message:
                notebook_services.set_info(notebook, InfoCode.WAITING_FOR_CAPACITY, message)
    return placed
