"""`manage.py host list|drain|undrain|remove`: the admin's host actions, for scripts
and for an operator with a shell on the control plane (docs/deployment.md)."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from nbcloud.hosts import services
from nbcloud.hosts.models import Host, HostState


class Command(BaseCommand):
    help = (
        "List hosts; drain one (no new notebooks, those running keep running), undrain "
        "it, or remove one whose worker is stopped and that holds no notebook."
    )

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["list", "drain", "undrain", "remove"])
        parser.add_argument("name", nargs="?", help="The host (NBCLOUD_HOST_NAME).")

    def handle(self, action, name, **options):
        if action == "list":
            for host in Host.objects.all():
                age = (timezone.now() - host.last_heartbeat_at).total_seconds()
                placed = host.notebooks.count()
                self.stdout.write(
                    f"{host.name}\t{host.region}\t{host.state}\t{placed} notebooks\t"
                    f"heartbeat {age:.0f} s ago"
                )
            return
        if not name:
            raise CommandError(f"name the host to {action}: manage.py host {action} NAME")
        host = Host.objects.filter(name=name).first()
        if host is None:
            known = ", ".join(Host.objects.values_list("name", flat=True)) or "none"
            raise CommandError(f"no host {name!r} (hosts: {known})")
        if action == "drain":
            if not services.drain(host):
                raise CommandError(f"host {name} is {host.state}, not READY: nothing to drain")
            self.stdout.write(f"host {name} is DRAINING: no new notebooks go there")
        elif action == "undrain":
            if not services.undrain(host):
                raise CommandError(f"host {name} is {host.state}, not DRAINING")
            self.stdout.write(f"host {name} is READY")
        else:
            self._remove(host)

    def _remove(self, host: Host) -> None:
        with transaction.atomic():
            host = Host.objects.select_for_update().get(pk=host.pk)
            silent = (timezone.now() - host.last_heartbeat_at).total_seconds()
            if host.state != HostState.LOST and silent < settings.NBCLOUD_HOST_LOST_AFTER:
                raise CommandError(
                    f"host {host.name}'s worker heart-beat {silent:.0f} s ago: stop it first "
                    f"(it registers the host again), then remove the host"
                )
            placed = list(host.notebooks.values_list("name", flat=True)[:5])
            if placed:
                raise CommandError(
                    f"host {host.name} still holds notebooks ({', '.join(placed)}): drain it "
                    "and stop them (they start again elsewhere), then remove it"
                )
            host.delete()
        self.stdout.write(f"host {host.name} removed")
