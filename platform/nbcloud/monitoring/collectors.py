"""What `/metrics` reports, computed at scrape time.

Fleet state (notebooks, hosts, GPUs, the control queues) is read from the
database and the broker when Prometheus scrapes, so every web process answers
the same and no process has to be told of changes; event-like series (failures,
durations) come from the Redis-backed counters in `fleet`.

A scrape's cost does not grow with the number of hosts: the fleet is counted by
region in the database, and a host is named only when it needs someone (not
READY, or its heartbeat late). Each host's own series (its GPUs, its queue, its
disks) come from its worker's metrics port (`workers.sampler`).
"""

from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count, Func, IntegerField, Min, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.utils import floatToGoString

from nbcloud.hosts.models import Host, HostState
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import TRANSITIONAL_STATES, State
from nbcloud.notices.models import Delivery, DeliveryState

from . import fleet

FIXED_QUEUES = ("control", "billing")


# Waiting states whose oldest notebook is reported (alerts: stuck in STARTING).
WAITING_STATES = (State.QUEUED, *sorted(TRANSITIONAL_STATES))


class PlatformCollector:
    def collect(self):
        # The database's series are read first, all of them: a database that is down
        # leaves them out and says so in nbcloud_database_up, not in a failed scrape.
        try:
            from_database = [
                self._notebooks(),
                self._oldest_in_state(),
                self._gpus(),
                *self._hosts(),
                self._notice_deliveries(),
            ]
        except DatabaseError as exc:
            fleet.log.warning("fleet series not readable from the database: %s", exc)
            from_database = None
        yield _up("nbcloud_database_up", "1 when the database answers, 0 when not.", from_database)
        yield from from_database or ()
        queues = self._queue_lengths()
        if fleet.broker_redis() is not None:
            yield _up("nbcloud_broker_up", "1 when the broker answers, 0 when not.", queues)
        if queues is not None:
            yield queues
        for metric in fleet.METRICS:
            yield self._recorded(metric)

    def _oldest_in_state(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "nbcloud_notebook_oldest_in_state_seconds",
            "How long the notebook longest in each waiting state has been in it (0: none).",
            labels=["state"],
        )
        since = dict(
            Notebook.objects.filter(state__in=WAITING_STATES)
            .values("state")
            .annotate(oldest=Min("state_changed_at"))
            .order_by()
            .values_list("state", "oldest")
        )
        now = timezone.now()
        for state in WAITING_STATES:
            oldest = since.get(state)
            family.add_metric([state], (now - oldest).total_seconds() if oldest else 0)
        return family

    def _hosts(self) -> list[GaugeMetricFamily]:
        from nbcloud.catalog.services import catalog

        counts = GaugeMetricFamily(
            "nbcloud_hosts", "Hosts by region and state.", labels=["region", "state"]
        )
        by_state = {
            (row["region"], row["state"]): row["n"]
            for row in Host.objects.values("region", "state").annotate(n=Count("pk")).order_by()
        }
        for region in sorted(set(catalog().regions) | {region for region, _ in by_state}):
            for state in HostState.values:
                counts.add_metric([region, state], by_state.get((region, state), 0))
        states = GaugeMetricFamily(
            "nbcloud_host_state",
            "For each host that needs attention (not READY, or its heartbeat late): "
            "1 for its state (READY, DRAINING, LOST), 0 for the others.",
            labels=["host", "region", "state"],
        )
        heartbeats = GaugeMetricFamily(
            "nbcloud_host_last_heartbeat_timestamp_seconds",
            "When each host that needs attention last said it was alive (Unix time).",
            labels=["host", "region"],
        )
        late = timezone.now() - timedelta(seconds=2 * settings.NBCLOUD_HEARTBEAT_INTERVAL)
        attention = Q(last_heartbeat_at__lt=late) | ~Q(state=HostState.READY)
        for host in Host.objects.filter(attention).only(
            "name", "region", "state", "last_heartbeat_at"
        ):
            for state in HostState.values:
                states.add_metric([host.name, host.region, state], int(host.state == state))
            heartbeats.add_metric([host.name, host.region], host.last_heartbeat_at.timestamp())
        return [counts, states, heartbeats]

    def _notebooks(self) -> GaugeMetricFamily:
        from nbcloud.catalog.services import catalog

        family = GaugeMetricFamily(
            "nbcloud_notebooks", "Notebooks by state and region.", labels=["state", "region"]
        )
        counts = {
            (row["state"], row["region"]): row["n"]
            for row in Notebook.objects.exclude(state=State.DELETED)
            .values("state", "region")
            .annotate(n=Count("pk"))
            .order_by()
        }
        regions = set(catalog().regions) | {region for _, region in counts}
        for region in sorted(regions):
            for state in State.values:
                if state != State.DELETED:
                    family.add_metric([state, region], counts.get((state, region), 0))
        return family

    def _gpus(self) -> GaugeMetricFamily:
        """The GPUs of the hosts not LOST, by region, held by a notebook or free (each
        host's own are on its worker's port, `nbcloud_host_gpus`)."""
        family = GaugeMetricFamily(
            "nbcloud_gpus",
            "GPUs of the hosts that are not LOST, by region, used or free.",
            labels=["region", "state"],
        )
        live = ~Q(state=HostState.LOST)
        total = dict(
            Host.objects.filter(live)
            .values("region")
            .annotate(n=Coalesce(Sum(JsonLength("gpus")), 0))
            .order_by()
            .values_list("region", "n")
        )
        used = dict(
            Notebook.objects.filter(host__isnull=False)
            .exclude(host__state=HostState.LOST)
            .values("host__region")
            .annotate(n=Coalesce(Sum(JsonLength("gpu_uuids")), 0))
            .order_by()
            .values_list("host__region", "n")
        )
        for region in sorted(total):
            family.add_metric([region, "used"], used.get(region, 0))
            family.add_metric([region, "free"], max(0, total[region] - used.get(region, 0)))
        return family

    def _notice_deliveries(self) -> GaugeMetricFamily:
        """Deliveries by state: those RETRYING or FAILED are notices nobody received."""
        family = GaugeMetricFamily(
            "nbcloud_notice_deliveries",
            "Notice deliveries kept (NBCLOUD_NOTICE_RETENTION_DAYS), by state.",
            labels=["state"],
        )
        counts = dict(
            Delivery.objects.values("state").annotate(n=Count("pk")).values_list("state", "n")
        )
        for state in DeliveryState.values:
            family.add_metric([state], counts.get(state, 0))
        return family

    def _queue_lengths(self) -> GaugeMetricFamily | None:
        """The control plane's queues (each host's own: its worker's port)."""
        lengths = queue_lengths(FIXED_QUEUES)
        if lengths is None:
            return None
        return queue_family(lengths)

    def _recorded(self, metric):
        series = fleet.read(metric)
        if not metric.labels and not series:
            series = {(): {}}  # an unlabelled series exists from the start, at zero
        labels = list(metric.labels)
        if isinstance(metric, fleet.Counter):
            family = CounterMetricFamily(metric.name, metric.documentation, labels=labels)
            for values, fields in sorted(series.items()):
                family.add_metric(list(values), fields.get("total", 0))
            return family
        family = HistogramMetricFamily(metric.name, metric.documentation, labels=labels)
        for values, fields in sorted(series.items()):
            buckets = [(floatToGoString(le), fields.get(repr(le), 0)) for le in metric.buckets]
            buckets.append(("+Inf", fields.get("+Inf", 0)))
            family.add_metric(list(values), buckets, sum_value=fields.get("sum", 0))
        return family


def _up(name: str, documentation: str, result) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], int(result is not None))
    return family


class JsonLength(Func):
    """The length of a JSON array column (PostgreSQL's jsonb, SQLite's JSON text)."""

    function = "jsonb_array_length"
    output_field = IntegerField()

    def as_sqlite(self, compiler, connection, **extra):
        return super().as_sql(compiler, connection, function="json_array_length", **extra)


def queue_family(lengths: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "nbcloud_queue_length", "Messages waiting in each broker queue.", labels=["queue"]
    )
    for queue, length in lengths.items():
        family.add_metric([queue], length)
    return family


def queue_lengths(queues) -> dict[str, int] | None:
    """Messages waiting in each of `queues`, all priorities (None: the broker is down
    or not Redis)."""
    client = fleet.broker_redis()
    if client is None:
        return None
    try:
        with client.pipeline(transaction=False) as pipe:
            for queue in queues:
                for key in _priority_keys(queue):
                    pipe.llen(key)
            lengths = pipe.execute()
    except Exception as exc:  # the broker is down: say so by omission, not a 500
        fleet.log.warning("queue lengths not readable: %s", exc)
        return None
    per_queue = len(_priority_keys(""))
    return {q: sum(lengths[i * per_queue : (i + 1) * per_queue]) for i, q in enumerate(queues)}


def _priority_keys(queue: str) -> list[str]:
    """kombu's Redis transport keeps a queue's priorities 3, 6 and 9 in keys of their own."""
    sep = "\x06\x16"
    return [queue, *(f"{queue}{sep}{priority}" for priority in (3, 6, 9))]


def registry():
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(PlatformCollector())
    return reg
