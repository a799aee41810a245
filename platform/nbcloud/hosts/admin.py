from django.contrib import admin, messages
from django.db.models import Prefetch
from django.utils import timezone

from nbcloud.notebooks.models import Notebook

from . import services
from .models import Host

GIB = 1024**3


@admin.action(description="Drain selected hosts (no new notebooks; running ones keep running)")
def drain_hosts(modeladmin, request, queryset):
    _change_state(modeladmin, request, queryset, services.drain, "Draining", "READY")


@admin.action(description="Undrain selected hosts (take new notebooks again)")
def undrain_hosts(modeladmin, request, queryset):
    _change_state(modeladmin, request, queryset, services.undrain, "Ready again", "DRAINING")


def _change_state(modeladmin, request, queryset, change, verb: str, needed: str) -> None:
    changed = [host.name for host in queryset if change(host)]
    skipped = sorted(set(queryset.values_list("name", flat=True)) - set(changed))
    if changed:
        modeladmin.message_user(request, f"{verb}: {', '.join(changed)}.", messages.SUCCESS)
    if skipped:
        modeladmin.message_user(
            request, f"Left as they are (not {needed}): {', '.join(skipped)}.", messages.WARNING
        )


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "region",
        "state",
        "gpus_used",
        "cpus_used",
        "memory_used",
        "disk_used",
        "notebook_count",
        "heartbeat_age",
        "runtime",
    ]
    list_filter = ["region", "state", "runtime"]
    search_fields = ["name"]
    actions = [drain_hosts, undrain_hosts]
    readonly_fields = ["registered_at", "last_heartbeat_at", "gpus", "labels"]

    def get_queryset(self, request):
        holding = Notebook.objects.only("host_id", "flavor", "gpu", "cpu", "gpu_uuids")
        return (
            super().get_queryset(request).prefetch_related(Prefetch("notebooks", queryset=holding))
        )

    @staticmethod
    def _used(host: Host) -> dict:
        # Notebooks point at a host exactly while they hold capacity there.
        return services.Capacity.of(host, host.notebooks.all()).used

    @admin.display(description="GPUs used")
    def gpus_used(self, host: Host) -> str:
        models = sorted({gpu["model"] for gpu in host.gpus})
        return f"{self._used(host)['gpus']} / {len(host.gpus)} {', '.join(models)}".strip()

    @admin.display(description="vCPUs used")
    def cpus_used(self, host: Host) -> str:
        return f"{self._used(host)['cpus']} / {host.cpus}"

    @admin.display(description="memory used (GiB)")
    def memory_used(self, host: Host) -> str:
        return f"{self._used(host)['memory_bytes'] / GIB:.0f} / {host.memory_bytes / GIB:.0f}"

    @admin.display(description="disk reserved (GiB)")
    def disk_used(self, host: Host) -> str:
        return f"{self._used(host)['disk_bytes'] / GIB:.0f} / {host.disk_bytes / GIB:.0f}"

    @admin.display(description="notebooks")
    def notebook_count(self, host: Host) -> int:
        return len(host.notebooks.all())

    @admin.display(description="last heartbeat", ordering="last_heartbeat_at")
    def heartbeat_age(self, host: Host) -> str:
        seconds = int((timezone.now() - host.last_heartbeat_at).total_seconds())
        if seconds < 120:
            return f"{seconds} s ago"
        if seconds < 7200:
            return f"{seconds // 60} min ago"
        return f"{seconds // 3600} h ago"
