"""What `/metrics` reports, computed at scrape time.

Fleet state (notebooks, GPUs, queue lengths) is read from the database and the
broker when Prometheus scrapes, so every web process answers the same and no
process has to be told of changes; event-like series (failures, durations)
come from the Redis-backed counters in `fleet`.
"""

from collections import Counter as Tally

from django.db import DatabaseError
from django.db.models import Count, Min
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
                self._host_gpus(),
                *self._hosts(),
                self._notice_deliveries(),
            ]
        except DatabaseError as exc:
            fleet.log.warning("fleet series not readable from the database: %s", exc)
            from_database = None
        yield _up("nbcloud_database_up", "1 when the database answers, 0 when not.", from_database)
        yield from from_database or ()
        queues = self._queue_lengths(hosts=from_database is not None)
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
        states = GaugeMetricFamily(
            "nbcloud_host_state",
            "1 for each host's state (READY, DRAINING, LOST), 0 for the others.",
            labels=["host", "region", "state"],
        )
        heartbeats = GaugeMetricFamily(
            "nbcloud_host_last_heartbeat_timestamp_seconds",
            "When each host's worker last said it was alive (Unix time).",
            labels=["host", "region"],
        )
        for host in Host.objects.only("name", "region", "state", "last_heartbeat_at"):
            for state in HostState.values:
                states.add_metric([host.name, host.region, state], int(host.state == state))
            heartbeats.add_metric([host.name, host.region], host.last_heartbeat_at.timestamp())
        return [states, heartbeats]

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

    def _host_gpus(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "nbcloud_host_gpus", "GPUs of each host, free or used.", labels=["host", "state"]
        )
        used = Tally()
        for host_id, uuids in Notebook.objects.filter(host__isnull=False).values_list(
            "host_id", "gpu_uuids"
        ):
            used[host_id] += len(uuids)
        for host in Host.objects.only("id", "name", "gpus"):
            total = len(host.gpus)
            family.add_metric([host.name, "used"], used[host.pk])
            family.add_metric([host.name, "free"], max(0, total - used[host.pk]))
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

    def _queue_lengths(self, hosts: bool = True) -> GaugeMetricFamily | None:
        client = fleet.broker_redis()
        if client is None:
            return None
        family = GaugeMetricFamily(
            "nbcloud_queue_length", "Messages waiting in each broker queue.", labels=["queue"]
        )
        queues = [*FIXED_QUEUES]
        if hosts:  # the hosts' queues are named in the database
            queues += [host.queue for host in Host.objects.only("name")]
        try:
            with client.pipeline(transaction=False) as pipe:
                for queue in queues:
                    for key in _priority_keys(queue):
                        pipe.llen(key)
                lengths = pipe.execute()
        except Exception as exc:  # the broker is down: say so by omission, not a 500
            fleet.log.warning("queue lengths not readable: %s", exc)
            return None
        per_queue = len(lengths) // max(1, len(queues))
        for i, queue in enumerate(queues):
            family.add_metric([queue], sum(lengths[i * per_queue : (i + 1) * per_queue]))
        return family

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


def _priority_keys(queue: str) -> list[str]:
    """kombu's Redis transport keeps a queue's priorities 3, 6 and 9 in keys of their own."""
    sep = "\x06\x16"
    return [queue, *(f"{queue}{sep}{priority}" for priority in (3, 6, 9))]


def registry():
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(PlatformCollector())
    return reg
