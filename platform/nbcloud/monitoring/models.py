from django.db import models
from django.utils import timezone


class NotebookSample(models.Model):
    """One reading of a running notebook, taken on its host; kept about an hour.

    None where the runtime cannot tell (network bytes of an editor sharing the
    host's network, say). `gpus`: [{"uuid", "utilization_percent",
    "memory_used_bytes", "memory_total_bytes"}].
    """

    notebook = models.ForeignKey(
        "notebooks.Notebook", on_delete=models.CASCADE, related_name="samples"
    )
    at = models.DateTimeField(default=timezone.now, db_index=True)
    host = models.CharField(max_length=100)
    cpu_cores = models.FloatField(null=True, help_text="CPU in use, in cores.")
    cpu_seconds = models.FloatField(null=True)
    memory_bytes = models.BigIntegerField(null=True)
    memory_limit_bytes = models.BigIntegerField(null=True)
    gpus = models.JSONField(default=list)
    workspace_bytes = models.BigIntegerField(null=True)
    network_rx_bytes = models.BigIntegerField(null=True)
    network_tx_bytes = models.BigIntegerField(null=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["notebook", "at"])]

    def __str__(self) -> str:
        return f"{self.notebook_id} @ {self.at:%H:%M:%S}"
