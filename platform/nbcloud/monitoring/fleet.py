"""Fleet-wide counters and histograms kept in the broker's Redis.

Task failures, billing ticks and start durations happen in worker processes on
many hosts, while `/metrics` is answered by any web process. prometheus-client's
multiprocess mode only merges the processes of one machine (through files in
one directory), so these series live in Redis instead: every process adds to
the same hashes (HINCRBY is atomic) and whichever web process is scraped reads
the totals. Recording never fails the work it measures: an unreachable Redis
loses a sample and logs, nothing more.
"""

import json
import logging
from dataclasses import dataclass, field

import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)
PREFIX = "nbcloud:metrics:"
_client: redis.Redis | None = None


@dataclass(frozen=True)
class Counter:
    name: str  # exposed with a `_total` suffix
    documentation: str
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Histogram:
    name: str
    documentation: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = field(default=())


TASK_FAILURES = Counter(
    "nbcloud_task_failures", "Celery tasks that raised, by task name.", ("task",)
)
START_DURATION = Histogram(
    "nbcloud_notebook_start_duration_seconds",
    "From the request (QUEUED) to RUNNING, by runtime.",
    ("runtime",),
    (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600),
)
BILLING_TICK = Histogram(
    "nbcloud_billing_tick_duration_seconds",
    "Duration of the per-minute billing tick.",
    (),
    (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
METRICS = (TASK_FAILURES, START_DURATION, BILLING_TICK)


def broker_redis() -> redis.Redis | None:
    """A client of the broker's Redis (None when the broker is not Redis)."""
    global _client
    if _client is None:
        _client = connect(settings.CELERY_BROKER_URL)
    return _client


def connect(url: str) -> redis.Redis | None:
    # One try, briefly: a scrape or a task must not wait on a broker that is down.
    options = {
        "socket_timeout": 2,
        "socket_connect_timeout": 2,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_error": [],
    }
    if url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"), **options)
    if url.startswith(("redis://", "rediss://")):
        return redis.Redis.from_url(url, **options)
    return None


def _key(metric) -> str:
    return PREFIX + metric.name


def _field(values: tuple[str, ...], suffix: str) -> str:
    return json.dumps([list(values), suffix])


def _write(metric, updates: dict[str, float]) -> None:
    client = broker_redis()
    if client is None:
        return
    try:
        with client.pipeline(transaction=False) as pipe:
            for name, amount in updates.items():
                pipe.hincrbyfloat(_key(metric), name, amount)
            pipe.execute()
    except (redis.RedisError, OSError) as exc:
        log.warning("metric %s not recorded: %s", metric.name, exc)


def _values(metric, labels: dict[str, str]) -> tuple[str, ...]:
    return tuple(str(labels[name]) for name in metric.labels)


def increment(counter: Counter, amount: float = 1, **labels: str) -> None:
    _write(counter, {_field(_values(counter, labels), "total"): amount})


def observe(histogram: Histogram, value: float, **labels: str) -> None:
    values = _values(histogram, labels)
    updates = {_field(values, repr(le)): 1 for le in histogram.buckets if value <= le}
    updates[_field(values, "+Inf")] = 1
    updates[_field(values, "sum")] = value
    return _write(histogram, updates)


def read(metric) -> dict[tuple[str, ...], dict[str, float]]:
    """{label values: {suffix: value}} as recorded so far (empty if unreachable)."""
    client = broker_redis()
    if client is None:
        return {}
    try:
        raw = client.hgetall(_key(metric))
    except (redis.RedisError, OSError) as exc:
        log.warning("metric %s not readable: %s", metric.name, exc)
        return {}
    series: dict[tuple[str, ...], dict[str, float]] = {}
    for name, value in raw.items():
        values, suffix = json.loads(name)
        series.setdefault(tuple(values), {})[suffix] = float(value)
    return series
