"""Notebook samples: stored by the hosts' samplers, read by the JSON metrics API."""

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from nbcloud.notebooks.models import Notebook

from .models import NotebookSample

FIELDS = (
    "at",
    "host",
    "cpu_cores",
    "cpu_seconds",
    "memory_bytes",
    "memory_limit_bytes",
    "gpus",
    "workspace_bytes",
    "network_rx_bytes",
    "network_tx_bytes",
)


def oldest_kept(now: datetime | None = None) -> datetime:
    return (now or timezone.now()) - timedelta(seconds=settings.NBCLOUD_SAMPLE_RETENTION)


def record(taken: list[NotebookSample]) -> None:
    """Store a round of samples and forget those past the retention."""
    if taken:
        NotebookSample.objects.bulk_create(taken)
    NotebookSample.objects.filter(at__lt=oldest_kept()).delete()


def series(notebook: Notebook, since: datetime | None) -> list[dict]:
    start = max(since, oldest_kept()) if since else oldest_kept()
    return list(notebook.samples.filter(at__gte=start).order_by("at", "id").values(*FIELDS))
