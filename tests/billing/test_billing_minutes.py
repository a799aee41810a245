"""Billable intervals and the per-minute tick: prices, minutes, idempotence, concurrency.

Minute k of an interval covers [start + 60k s, start + 60(k+1) s) and is billed
in full once it has begun. Times are explicit here (`open_interval(nb, at)`,
`close_interval(nb, at)`, `tick(now)`) except where the lifecycle opens and
closes intervals itself (placement on a host, stop, failed start, delete).
No Celery worker runs: tasks sent on commit are captured, never sent.
"""

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from nbcloud.billing import services as billing
from nbcloud.billing.models import BillableInterval, Price, UsageRecord
from nbcloud.hosts.models import Host, HostState
from nbcloud.hosts.services import place_queued
from nbcloud.notebooks import services
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import InfoCode, State

GIB = 1024**3
T0 = datetime(2026, 3, 10, 9, 0, 0, 250_000, tzinfo=UTC)  # not on a minute boundary
V100 = Decimal("0.0292")  # catalogue default of ai1-1-gpu, per GPU per minute
VCPU = Decimal("0.0005")  # catalogue default of ai1-1-cpu, per vCPU per minute
_names = count()


def make_notebook(project, *, gpu=0, cpu=0, state=State.STARTING, **fields) -> Notebook:
    return Notebook.objects.create(
        project=project,
        name=f"nb{next(_names)}",
        framework_id="conda",
        framework_version="py311",
        editor_id="jupyterlab",
        flavor=fields.pop("flavor", "ai1-1-gpu" if gpu else "ai1-1-cpu"),
        gpu=gpu,
        cpu=cpu,
        region="GRA",
        state=state,
        queued_at=T0,
        **fields,
    )


def make_host(name="gra-1", *, gpus=4) -> Host:
    return Host.objects.create(
        name=name,
        region="GRA",
        state=HostState.READY,
        cpus=64,
        memory_bytes=512 * GIB,
        disk_bytes=1000 * GIB,
        gpus=[
            {
                "index": i,
                "uuid": f"GPU-{name}-{i}",
                "model": "Tesla V100S",
                "memory_bytes": 32 * GIB,
            }
            for i in range(gpus)
        ],
    )


def minutes(interval) -> list[int]:
    return list(
        UsageRecord.objects.filter(interval=interval)
        .order_by("minute")
        .values_list("minute", flat=True)
    )


def total(interval) -> Decimal:
    """The sum of the records, in Python: exact on every database."""
    amounts = UsageRecord.objects.filter(interval=interval).values_list("amount", flat=True)
    return sum(amounts, Decimal(0))


def fresh(obj):
    obj.refresh_from_db()
    return obj


S = timedelta(seconds=1)
US = timedelta(microseconds=1)
M = timedelta(minutes=1)


# Counting minutes.


@pytest.mark.parametrize(
    ("duration", "expected"),
    [
        (timedelta(0), 0),
        (US, 1),
        (59 * S, 1),
        (M - US, 1),
        (M, 1),
        (M + US, 2),
        (2 * M, 2),
        (timedelta(hours=1, microseconds=1), 61),
        (timedelta(days=40), 40 * 24 * 60),
        (-S, 0),
    ],
)
def test_minutes_commenced_is_ceil_of_the_duration_in_minutes(duration, expected):
    assert billing.minutes_commenced(T0, T0 + duration) == expected


# Prices.


@pytest.mark.django_db
def test_an_interval_takes_the_catalogue_price_without_an_admin_price(alpha):
    notebook = make_notebook(alpha, gpu=2)
    interval = billing.open_interval(notebook, T0)
    interval = fresh(interval)
    assert interval.unit_price == V100
    assert interval.units == 2
    assert interval.flavor == "ai1-1-gpu"
    assert interval.currency == "EUR"
    assert interval.project == alpha
    assert interval.started_at == T0 and interval.ended_at is None
    assert isinstance(interval.unit_price, Decimal)


@pytest.mark.django_db
def test_an_interval_takes_the_admin_price_in_force_when_it_opens(alpha):
    Price.objects.create(
        flavor="ai1-1-gpu", unit_price="0.0400", valid_from=T0 - timedelta(days=30)
    )
    Price.objects.create(flavor="ai1-1-gpu", unit_price="0.0350", valid_from=T0 - timedelta(days=1))
    Price.objects.create(flavor="ai1-1-gpu", unit_price="9.9999", valid_from=T0 + S)  # future
    Price.objects.create(flavor="ai1-1-cpu", unit_price="7.0", valid_from=T0 - S)  # other flavor
    interval = fresh(billing.open_interval(make_notebook(alpha, gpu=1), T0))
    assert interval.unit_price == Decimal("0.035")


@pytest.mark.django_db
def test_a_price_change_does_not_touch_an_open_interval(alpha):
    notebook = make_notebook(alpha, cpu=4)
    interval = billing.open_interval(notebook, T0)
    billing.tick(T0 + 2 * M)
    Price.objects.create(flavor="ai1-1-cpu", unit_price="1.000000", valid_from=T0 + 3 * M)
    billing.tick(T0 + 5 * M)
    billing.close_interval(notebook, T0 + 7 * M + S)
    assert fresh(interval).unit_price == VCPU
    assert minutes(interval) == list(range(8))
    assert total(interval) == 8 * 4 * VCPU
    # The next interval of the same notebook pays the new price.
    later = fresh(billing.open_interval(notebook, T0 + 10 * M))
    assert later.unit_price == Decimal(1)


# The tick.


@pytest.mark.django_db
def test_each_commenced_minute_is_one_record_billed_in_full(alpha):
    notebook = make_notebook(alpha, gpu=3)
    interval = billing.open_interval(notebook, T0)
    assert billing.tick(T0) == 0  # nothing has begun yet
    assert billing.tick(T0 + US) == 1  # minute 0 has begun: billed in full
    assert billing.tick(T0 + M - US) == 0
    assert billing.tick(T0 + M) == 0  # [start, start + 60 s) is still one minute
    assert billing.tick(T0 + M + US) == 1
    records = list(UsageRecord.objects.filter(interval=interval).order_by("minute"))
    assert [r.minute for r in records] == [0, 1]
    for record in records:
        assert record.amount == 3 * V100 and isinstance(record.amount, Decimal)
        assert record.units == 3
        assert record.flavor == "ai1-1-gpu" and record.currency == "EUR"
        assert record.project_id == alpha.pk and record.notebook_id == notebook.pk
        assert record.starts_at == T0 + record.minute * M


@pytest.mark.django_db
def test_a_tick_that_runs_twice_bills_nothing_twice(alpha):
    interval = billing.open_interval(make_notebook(alpha, gpu=1), T0)
    assert billing.tick(T0 + 4 * M + S) == 5
    assert billing.tick(T0 + 4 * M + S) == 0
    assert billing.tick(T0 + 4 * M + 2 * S) == 0
    assert billing.tick(T0 + 3 * M) == 0  # a late, older tick
    assert minutes(interval) == [0, 1, 2, 3, 4]


@pytest.mark.django_db
def test_missed_ticks_are_made_up_by_the_next(alpha):
    interval = billing.open_interval(make_notebook(alpha, gpu=1), T0)
    assert billing.tick(T0 + 90 * M + S) == 91
    assert minutes(interval) == list(range(91))
    assert total(interval) == 91 * V100


@pytest.mark.django_db
def test_cost_to_date_is_an_exact_decimal_sum(alpha):
    """Summing many records stays exact (SQLite's SUM of a decimal column is a float)."""
    notebook = make_notebook(alpha, gpu=1)
    billing.open_interval(notebook, T0)
    billing.close_interval(notebook, T0 + 90 * M + S)
    costs = billing.cost_to_date(notebook=notebook, now=T0 + 2 * 60 * M)
    assert costs == [billing.Cost(91 * V100, "EUR")]
    shown = costs[0].as_dict()
    assert isinstance(shown["amount"], str) and Decimal(shown["amount"]) == 91 * V100
    assert billing.cost_to_date(project=alpha, now=T0 + 2 * 60 * M) == costs


@pytest.mark.django_db
def test_a_minute_written_meanwhile_by_another_beat_is_not_written_again(alpha):
    """Insert-or-ignore: the unique (interval, minute) is the last word."""
    notebook = make_notebook(alpha, gpu=1)
    interval = billing.open_interval(notebook, T0)
    billing.tick(T0 + 3 * M + S)
    UsageRecord.objects.create(  # as another beat would have written it
        interval=interval,
        minute=4,
        project=alpha,
        notebook=notebook,
        flavor=interval.flavor,
        units=1,
        amount=V100,
        currency="EUR",
        starts_at=T0 + 4 * M,
    )
    billing.tick(T0 + 5 * M + S)
    billing.tick(T0 + 5 * M + S)
    assert minutes(interval) == list(range(6))
    billing.close_interval(notebook, T0 + 5 * M + 2 * S)
    assert minutes(interval) == list(range(6))


@pytest.mark.django_db
def test_closing_writes_the_last_minutes_at_once_and_later_ticks_add_nothing(alpha):
    notebook = make_notebook(alpha, gpu=2)
    interval = billing.open_interval(notebook, T0)
    billing.tick(T0 + 2 * M)
    billing.close_interval(notebook, T0 + 5 * M + 30 * S)
    interval = fresh(interval)
    assert interval.ended_at == T0 + 5 * M + 30 * S
    assert minutes(interval) == list(range(6))
    assert billing.tick(T0 + 60 * M) == 0
    assert minutes(interval) == list(range(6))
    assert total(interval) == 6 * 2 * V100
    # Closing again (nothing open) changes nothing.
    billing.close_interval(notebook, T0 + 61 * M)
    assert fresh(interval).ended_at == T0 + 5 * M + 30 * S


@pytest.mark.django_db
def test_an_interval_closed_at_its_start_bills_nothing(alpha):
    notebook = make_notebook(alpha, gpu=1)
    interval = billing.open_interval(notebook, T0)
    billing.close_interval(notebook, T0)
    assert minutes(interval) == []


@pytest.mark.django_db
def test_the_tick_bills_every_open_interval_in_a_constant_number_of_queries(alpha, bravo):
    def queries_of_a_tick(now) -> int:
        with CaptureQueriesContext(connection) as queries:
            billing.tick(now)
        return len(queries)

    one = make_notebook(alpha, gpu=1)
    billing.open_interval(one, T0)
    few = queries_of_a_tick(T0 + S)
    billing.close_interval(one, T0 + S)

    notebooks = [
        make_notebook(alpha, gpu=1),
        make_notebook(alpha, cpu=8),
        make_notebook(bravo, gpu=4),
    ]
    intervals = [billing.open_interval(nb, T0 + M) for nb in notebooks]
    many = queries_of_a_tick(T0 + 21 * M)  # 20 minutes of 3 intervals
    assert many == few
    for interval in intervals:
        assert minutes(interval) == list(range(20))


# The lifecycle opens and closes intervals.


@pytest.fixture
def captured(django_capture_on_commit_callbacks):
    """Tasks sent on commit are captured, never sent to a broker."""
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        yield callbacks


def open_intervals(notebook):
    return BillableInterval.objects.filter(notebook=notebook, ended_at__isnull=True)


@pytest.mark.django_db
def test_placement_opens_an_interval_and_stopping_closes_it_with_its_minutes(alpha, captured):
    make_host()
    notebook = make_notebook(alpha, gpu=2, state=State.QUEUED)
    billing.tick(T0)
    assert not BillableInterval.objects.exists()  # QUEUED is not billed

    assert place_queued() == [(str(notebook.pk), "gra-1")]
    notebook = fresh(notebook)
    assert notebook.state == State.STARTING
    interval = open_intervals(notebook).get()
    assert interval.unit_price == V100 and interval.units == 2 and interval.currency == "EUR"
    assert interval.started_at == notebook.state_changed_at

    services.mark_running(notebook, editor_url="http://127.0.0.1:1", runtime_state={})
    assert open_intervals(notebook).count() == 1  # RUNNING: the same interval runs on
    # Backdate it: it has run 5 minutes and 1 second, never ticked.
    started = interval.started_at - 5 * M - S
    BillableInterval.objects.filter(pk=interval.pk).update(started_at=started)

    services.stop(fresh(notebook), actor="alice")
    notebook = fresh(notebook)
    assert notebook.state == State.STOPPING
    assert open_intervals(notebook).count() == 1  # STOPPING is billed: capacity is still held

    services.finish_stop(notebook, workspace_size=123)
    assert fresh(notebook).state == State.STOPPED and notebook.host is None
    interval = fresh(interval)
    assert interval.ended_at is not None
    expected = billing.minutes_commenced(started, interval.ended_at)
    assert expected == 6
    assert minutes(interval) == list(range(expected))
    assert total(interval) == expected * 2 * V100
    assert billing.tick(interval.ended_at + 10 * M) == 0  # STOPPED is not billed

    # A new start opens a new interval.
    services.start(fresh(notebook), actor="alice")
    assert fresh(notebook).state == State.QUEUED and not open_intervals(notebook).exists()
    place_queued()
    assert open_intervals(notebook).count() == 1
    assert BillableInterval.objects.filter(notebook=notebook).count() == 2


@pytest.mark.django_db
def test_a_failed_start_closes_the_interval(alpha, captured):
    make_host()
    notebook = make_notebook(alpha, cpu=2, state=State.QUEUED)
    place_queued()
    notebook = fresh(notebook)
    interval = open_intervals(notebook).get()
    assert interval.unit_price == VCPU and interval.units == 2
    services.fail_start(notebook, "The image could not be pulled.")
    assert fresh(notebook).state == State.FAILED
    interval = fresh(interval)
    assert interval.ended_at is not None
    assert len(minutes(interval)) == billing.minutes_commenced(
        interval.started_at, interval.ended_at
    )
    assert billing.tick(interval.ended_at + 10 * M) == 0  # FAILED after release is not billed


@pytest.mark.django_db
def test_deleting_a_running_notebook_closes_its_interval(alpha, captured):
    make_host()
    notebook = make_notebook(alpha, gpu=1, state=State.QUEUED)
    place_queued()
    notebook = fresh(notebook)
    services.mark_running(notebook, editor_url="http://127.0.0.1:1", runtime_state={})
    services.delete(fresh(notebook), actor="alice")
    notebook = fresh(notebook)
    assert notebook.state == State.DELETING and open_intervals(notebook).count() == 1
    services.finish_delete(notebook)
    assert not open_intervals(notebook).exists()
    assert fresh(notebook).info_code == InfoCode.DELETED


@pytest.mark.django_db
def test_a_queued_notebook_stopped_before_placement_is_never_billed(alpha, captured):
    notebook = make_notebook(alpha, gpu=1, state=State.QUEUED)
    services.stop(notebook, actor="alice")
    assert fresh(notebook).state == State.STOPPED
    billing.tick(T0 + 10 * M)
    assert not BillableInterval.objects.exists() and not UsageRecord.objects.exists()


# Two beats at once.


@pytest.fixture(params=["native", "portable"])
def billing_path(request, monkeypatch):
    """The database's own path (PostgreSQL: row locks + ON CONFLICT), and the portable one."""
    if request.param == "portable":
        monkeypatch.setattr(billing, "_bill_postgresql", billing._bill_portable)
    return request.param


def run_at_once(*calls) -> list:
    """Run each call in its own thread (own database connection), all released together."""
    barrier = threading.Barrier(len(calls))
    errors: list[BaseException] = []
    results: list = [None] * len(calls)

    def worker(index, call):
        try:
            barrier.wait(timeout=30)
            results[index] = call()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads), "a tick hung"
    assert not errors, errors
    return results


@pytest.mark.django_db(transaction=True)
def test_concurrent_ticks_never_bill_a_minute_twice(alpha, billing_path):
    notebooks = [make_notebook(alpha, gpu=1 + i % 4) for i in range(6)]
    intervals = [billing.open_interval(nb, T0 + i * S) for i, nb in enumerate(notebooks)]
    now = T0 + 30 * M + 10 * S
    written = run_at_once(*[lambda: billing.tick(now)] * 8)
    assert sum(written) == 6 * 31
    for interval in intervals:
        assert minutes(interval) == list(range(31))

    # Beats of different `now`s, some stale, at once.
    nows = [T0 + 40 * M + 10 * S, T0 + 35 * M, T0 + 45 * M + 10 * S, T0 + 45 * M + 10 * S]
    run_at_once(*[lambda n=n: billing.tick(n) for n in nows])
    for interval in intervals:
        assert minutes(interval) == list(range(46))
    assert UsageRecord.objects.count() == 6 * 46


@pytest.mark.django_db(transaction=True)
def test_a_close_racing_ticks_bills_exactly_the_commenced_minutes(alpha, billing_path):
    notebooks = [make_notebook(alpha, cpu=2) for _ in range(4)]
    intervals = [billing.open_interval(nb, T0) for nb in notebooks]
    end = T0 + 12 * M + 30 * S
    calls = [lambda n=nb: billing.close_interval(n, end) for nb in notebooks]
    calls += [lambda k=k: billing.tick(T0 + (10 + k) * M) for k in range(3)]  # now <= end
    run_at_once(*calls)
    for interval in intervals:
        interval = fresh(interval)
        assert interval.ended_at == end
        assert minutes(interval) == list(range(13))
        assert total(interval) == 13 * 2 * VCPU
