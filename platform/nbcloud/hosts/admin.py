from django.contrib import admin

from .models import Host


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):
    list_display = ["name", "region", "state", "cpus", "gpu_count", "runtime", "last_heartbeat_at"]
    list_filter = ["region", "state", "runtime"]
    search_fields = ["name"]

    @admin.display(description="GPUs")
    def gpu_count(self, host: Host) -> int:
        return len(host.gpus)
