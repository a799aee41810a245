from django.db import models
from django.utils import timezone


class HostState(models.TextChoices):
    READY = "READY", "ready"
    DRAINING = "DRAINING", "draining (no new notebooks)"
    LOST = "LOST", "lost (no heartbeat)"


class Host(models.Model):
    """A machine that runs notebooks; its worker consumes queue `host.<name>`."""

    name = models.CharField(max_length=100, unique=True)
    region = models.CharField(max_length=16, db_index=True)
    state = models.CharField(max_length=16, choices=HostState.choices, default=HostState.READY)
    cpus = models.PositiveIntegerField(help_text="vCPUs notebooks may reserve.")
    memory_bytes = models.BigIntegerField()
    disk_bytes = models.BigIntegerField()
    # [{"index": 0, "uuid": "GPU-...", "model": "...", "memory_bytes": ...}, ...]
    gpus = models.JSONField(default=list, blank=True)
    runtime = models.CharField(max_length=32, default="process")
    labels = models.JSONField(default=dict, blank=True)
    registered_at = models.DateTimeField(default=timezone.now)
    last_heartbeat_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["region", "name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.region})"

    @property
    def queue(self) -> str:
        return f"host.{self.name}"

    @property
    def gpu_uuids(self) -> list[str]:
        return [gpu["uuid"] for gpu in self.gpus]
