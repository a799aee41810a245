"""The billing invariant, over random schedules (hypothesis).

Whatever ticks run, when, how often and how late (a redelivered tick runs
again with the `now` it was first sent with), the records of a closed interval
are exactly its commenced minutes: ceil(duration / 60 s) of them, each worth
units x the price fixed when the interval opened, even if the price changes
while it is open.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbcloud.billing import services as billing
from nbcloud.billing.models import BillableInterval, Price, UsageRecord
from nbcloud.catalog.services import catalog
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import State

MINUTE = 60_000_000  # microseconds
HOUR = 60 * MINUTE
BASE = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
FLAVORS = {"ai1-1-gpu": 4, "h100-1-gpu": 4, "ai1-1-cpu": 12}  # flavor: most units
PRICES = st.decimals(min_value=Decimal("0.000001"), max_value=Decimal("50"), places=6)
_names = count()


def at(offset_us: int) -> datetime:
    return BASE + timedelta(microseconds=offset_us)


@dataclass(frozen=True)
class Schedule:
    flavor: str
    units: int
    start: int  # microseconds after BASE
    duration: int  # microseconds
    initial_price: Decimal | None  # None: the catalogue's default
    new_price: Decimal
    price_change: int  # microseconds after the start, while open
    # Each tick: the `now` it was sent with (after the start, may be negative)
    # and when each delivery of it runs (more than one: a redelivery).
    ticks: tuple[tuple[int, tuple[int, ...]], ...]
    tie_breaks: tuple[int, ...]


@st.composite
def schedules(draw) -> Schedule:
    flavor = draw(st.sampled_from(sorted(FLAVORS)))
    duration = draw(
        st.one_of(
            st.integers(0, 3 * HOUR),
            st.integers(0, 180).map(lambda m: m * MINUTE),  # on a minute boundary
            st.tuples(st.integers(1, 180), st.sampled_from([-1, 1])).map(
                lambda t: t[0] * MINUTE + t[1]  # a microsecond either side of one
            ),
        )
    )
    instants = st.one_of(
        st.integers(-5 * MINUTE, duration + 10 * MINUTE),
        st.integers(-5, duration // MINUTE + 10).map(lambda k: k * MINUTE),  # on a boundary
        st.sampled_from([0, 1, duration - 1, duration, duration + 1, MINUTE, MINUTE - 1]),
    )
    # Most deliveries run at once; some late, some more than once (redelivery).
    delays = st.one_of(st.just(0), st.integers(1, 20 * MINUTE))
    ticks = draw(
        st.lists(
            st.tuples(instants, st.lists(delays, min_size=1, max_size=3).map(tuple)),
            max_size=12,
        ).map(tuple)
    )
    return Schedule(
        flavor=flavor,
        units=draw(st.integers(1, FLAVORS[flavor])),
        start=draw(st.integers(0, MINUTE - 1)),
        duration=duration,
        initial_price=draw(st.none() | PRICES),
        new_price=draw(PRICES),
        price_change=draw(st.integers(1, max(1, duration))),
        ticks=ticks,
        tie_breaks=tuple(draw(st.lists(st.integers(0, 9), min_size=16, max_size=16))),
    )


def events_in_time_order(schedule: Schedule) -> list[tuple[str, int]]:
    """(what, its time relative to the start), in the order they run; ties in random order."""
    events = [("close", schedule.duration, 0), ("price", schedule.price_change, 0)]
    for now, deliveries in schedule.ticks:
        events += [("tick", now, delay) for delay in deliveries]
    runs_at = [(now + delay, what, now) for what, now, delay in events]
    ordered = sorted(
        enumerate(runs_at), key=lambda e: (e[1][0], schedule.tie_breaks[e[0] % 16], e[0])
    )
    # The interval opens first at time 0; a tick that runs before it bills nothing of it.
    before = [(what, now) for _, (when, what, now) in ordered if when < 0]
    after = [(what, now) for _, (when, what, now) in ordered if when >= 0]
    return [*before, ("open", 0), *after]


@pytest.mark.django_db
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(schedule=schedules())
def test_a_closed_interval_bills_exactly_its_commenced_minutes(alpha, schedule):
    Price.objects.all().delete()
    if schedule.initial_price is not None:
        Price.objects.create(
            flavor=schedule.flavor,
            unit_price=schedule.initial_price,
            valid_from=at(schedule.start) - timedelta(days=1),
        )
        price = schedule.initial_price
    else:
        price = Decimal(catalog().flavors[schedule.flavor].price_per_minute)
    gpu = schedule.units if FLAVORS[schedule.flavor] == 4 else 0
    notebook = Notebook.objects.create(
        project=alpha,
        name=f"prop{next(_names)}",
        framework_id="conda",
        framework_version="py311",
        editor_id="jupyterlab",
        flavor=schedule.flavor,
        gpu=gpu,
        cpu=0 if gpu else schedule.units,
        region="GRA",
        state=State.RUNNING,
    )
    assert notebook.units == schedule.units

    start = schedule.start
    for what, offset in events_in_time_order(schedule):
        if what == "open":
            billing.open_interval(notebook, at(start))
        elif what == "tick":
            billing.tick(at(start + offset))
        elif what == "close":
            billing.close_interval(notebook, at(start + offset))
        else:  # a price change, in force from the middle of the interval
            Price.objects.create(
                flavor=schedule.flavor,
                unit_price=schedule.new_price,
                valid_from=at(start + offset),
            )

    interval = BillableInterval.objects.get(notebook=notebook)
    assert interval.ended_at == at(start + schedule.duration)
    assert interval.unit_price == price  # fixed when it opened
    commenced = -(-schedule.duration // MINUTE)  # ceil(duration / 60 s)
    assert commenced == billing.minutes_commenced(interval.started_at, interval.ended_at)
    records = list(UsageRecord.objects.filter(interval=interval).order_by("minute"))
    assert [r.minute for r in records] == list(range(commenced))
    assert all(r.amount == schedule.units * price for r in records)
    assert all(
        r.starts_at == interval.started_at + r.minute * timedelta(minutes=1) for r in records
    )
    assert sum((r.amount for r in records), Decimal(0)) == commenced * schedule.units * price
    # And what the platform reports as this notebook's cost, exactly (no float on the way).
    reported = billing.cost_to_date(notebook=notebook, now=at(start + schedule.duration + HOUR))
    assert sum((c.amount for c in reported), Decimal(0)) == commenced * schedule.units * price
