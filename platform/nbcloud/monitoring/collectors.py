"""What `/metrics` reports, computed at scrape time.

Fleet state (notebooks, GPUs, queue lengths) is read from the database and the
broker when Prometheus scrapes, so every web process answers the same and no
process has to be told of changes; event-like series (failures, durations)
come from the Redis-backed counters in `fleet`.
"""

from collections import Counter as Tally

from django.db.models import Count
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.utils import floatToGoString

from nbcloud.hosts.models import Host
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import State
from nbcloud.notices.models import Delivery, DeliveryState

from . import fleet

FIXED_QUEUES = ("control", "billing")


class PlatformCollector:
    def collect(self):
        yield self._notebooks()
        yield self._host_gpus()
        yield self._notice_deliveries()
        queues = self._queue_lengths()
        if queues is not None:
            yield queues
        for metric in fleet.METRICS:
            yield self._recorded(metric)

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

    def _queue_lengths(self) -> GaugeMetricFamily | None:
        client = fleet.broker_redis()
        if client is None:
            return None
        family = GaugeMetricFamily(
            "nbcloud_queue_length", "Messages waiting in each broker queue.", labels=["queue"]
        )
        queues = [*FIXED_QUEUES, *(host.queue for host in Host.objects.only("name"))]
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


def _priority_keys(queue: str) -> list[str]:
    """kombu's Redis transport keeps a queue's priorities 3, 6 and 9 in keys of their own."""
    sep = "\x06\x16"
    return [queue, *(f"{queue}{sep}{priority}" for priority in (3, 6, 9))]


def registry():
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(PlatformCollector())
    return reg
