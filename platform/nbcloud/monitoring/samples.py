"""Notebook samples: stored by the hosts' samplers, read by the JSON metrics API."""

from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from nbcloud.errors import Invalid
from nbcloud.notebooks.models import Notebook

from .models import NotebookSample

# The uid of compose/grafana/dashboards/notebook.json.
DASHBOARD_UID = "nbcloud-notebook"
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
    """Store a round of samples and forget those past the retention.

    A host with nothing running writes nothing (SQLite has one writer at a time).
    """
    if not taken:
        return
    NotebookSample.objects.bulk_create(taken)
    NotebookSample.objects.filter(at__lt=oldest_kept()).delete()


def series(notebook: Notebook, since: datetime | None) -> list[dict]:
    start = max(since, oldest_kept()) if since else oldest_kept()
    return list(notebook.samples.filter(at__gte=start).order_by("at", "id").values(*FIELDS))


def dashboard_url(notebook: Notebook) -> str | None:
    """The notebook's Grafana dashboard, when NBCLOUD_GRAFANA_URL is set."""
    if not settings.NBCLOUD_GRAFANA_URL:
        return None
    return f"{settings.NBCLOUD_GRAFANA_URL}/d/{DASHBOARD_UID}/notebook?var-notebook={notebook.pk}"


def parse_since(raw: str | None) -> datetime | None:
    """`?since=`: an ISO 8601 time, or a number of seconds back."""
    if not raw:
        return None
    if raw.isdigit() and len(raw) <= 9:
        return timezone.now() - timedelta(seconds=int(raw))
    try:
        at = parse_datetime(raw.replace(" ", "+"))  # a '+' in a query string arrives as ' '
    except ValueError:
        at = None
    if at is None:
        raise Invalid(
            f"{raw[:40]!r} is neither an ISO 8601 time (2026-01-31T12:00:00Z) "
            "nor seconds back (600)",
            field="since",
        )
    return at if timezone.is_aware(at) else at.replace(tzinfo=UTC)


def series_response(notebook: Notebook, raw_since: str | None) -> dict:
    since = parse_since(raw_since)
    return {
        "notebook": str(notebook.pk),
        "interval": settings.NBCLOUD_SAMPLE_INTERVAL,
        "retention": settings.NBCLOUD_SAMPLE_RETENTION,
        "samples": series(notebook, since),
    }
