"""Billing: opening and closing intervals, the per-minute tick, cost and budgets.

The tick writes every commenced, not yet billed minute of every open
interval in one statement (PostgreSQL: INSERT ... SELECT generate_series ...
ON CONFLICT DO NOTHING), starting after each interval's last billed minute
(found in the unique (interval, minute) index). The unique constraint makes a
repeated tick harmless, and a missed tick is made up by the next, which bills
everything up to its `now`.

Ticks hold the billing lock exclusively and closes hold it shared (a
PostgreSQL advisory lock; SQLite serialises writers anyway): two ticks never
interleave, and an interval is never closed while a tick bills it, so a tick
never bills past the end of an interval closed meanwhile.
"""

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Max, QuerySet
from django.utils import timezone

from nbcloud import bulk
from nbcloud.catalog.services import catalog
from nbcloud.errors import BudgetExceeded
from nbcloud.notebooks.models import Notebook
from nbcloud.projects.models import Project

from .models import BillableInterval, Budget, Price, UsageRecord
from .money import from_sum, money_sum

log = logging.getLogger(__name__)
MINUTE_US = 60_000_000


def minutes_commenced(start: datetime, end: datetime) -> int:
    """How many minutes of [start, end) have begun: ceil(duration / 60 s), exactly."""
    micros = (end - start) // timedelta(microseconds=1)
    return max(0, -(-micros // MINUTE_US))


def price_for(flavor: str, at: datetime) -> tuple[Decimal, str]:
    """The price in force at `at`: the admin's latest, else the catalogue's default."""
    price = Price.objects.filter(flavor=flavor, valid_from__lte=at).order_by("-valid_from").first()
    if price is not None:
        return price.unit_price, price.currency
    found = catalog().flavors.get(flavor)
    return Decimal(found.price_per_minute if found else "0"), settings.NBCLOUD_CURRENCY


def open_interval(notebook: Notebook, at: datetime) -> BillableInterval:
    unit_price, currency = price_for(notebook.flavor, at)
    return BillableInterval.objects.create(
        notebook=notebook,
        project_id=notebook.project_id,
        flavor=notebook.flavor,
        units=notebook.units,
        unit_price=unit_price,
        currency=currency,
        started_at=at,
    )


_OPEN_INTERVALS = """
INSERT INTO billing_billableinterval
    (notebook_id, project_id, flavor, units, unit_price, currency, started_at, ended_at)
SELECT v.notebook, v.project, v.flavor, v.units, v.unit_price, v.currency, %s, NULL
FROM {rows}
WHERE NOT EXISTS (
    SELECT 1 FROM billing_billableinterval o WHERE o.notebook_id = v.notebook AND o.ended_at IS NULL
)
"""
_INTERVAL_COLUMNS = {
    "notebook": "uuid",
    "project": "integer",
    "flavor": "text",
    "units": "integer",
    "unit_price": "numeric",
    "currency": "text",
}


def open_intervals(notebooks: list[Notebook], at: datetime) -> int:
    """Open an interval at `at` for each notebook that has none open, at the price of
    its flavor in force then: one statement for them all. Returns how many opened."""
    if not notebooks:
        return 0
    prices = {flavor: price_for(flavor, at) for flavor in {n.flavor for n in notebooks}}
    rows = [
        {
            "notebook": bulk.key(Notebook, n.pk),
            "project": n.project_id,
            "flavor": n.flavor,
            "units": n.units,
            "unit_price": str(prices[n.flavor][0]),
            "currency": prices[n.flavor][1],
        }
        for n in notebooks
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            _OPEN_INTERVALS.format(rows=bulk.table(_INTERVAL_COLUMNS)),
            [bulk.stamp(at), bulk.rows(rows)],
        )
        return cursor.rowcount


BILLING_LOCK = 0x6E62_6331  # the advisory lock's key ("nbc1")


def _billing_lock(*, exclusive: bool) -> None:
    """Take the billing lock until the end of the current transaction."""
    if connection.vendor != "postgresql":
        return
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {function}(%s)", [BILLING_LOCK])


def close_interval(notebook: Notebook, at: datetime | None = None) -> None:
    """Close the notebook's open interval and bill its last minutes now.

    Without `at`, the end is read after taking the billing lock: a tick that
    held it billed up to a `now` no later than that. An `at` in the past (a
    lost host's last heartbeat) takes back the minutes a tick billed that
    begin at or after it: they never commenced.
    """
    with transaction.atomic():
        _billing_lock(exclusive=False)
        interval = BillableInterval.objects.filter(notebook=notebook, ended_at__isnull=True).first()
        if interval is None:
            return
        interval.ended_at = at or timezone.now()
        interval.save(update_fields=["ended_at"])
        if at is not None:
            UsageRecord.objects.filter(interval=interval, starts_at__gte=at).delete()
        _bill(BillableInterval.objects.filter(pk=interval.pk), now=interval.ended_at)


def restart_interval(notebook: Notebook, at: datetime | None) -> None:
    """Bill the notebook's open interval from `at`, when its host's scheduler says the
    editor started (None: it has not; nothing is billed until it does). Minutes
    already billed from the reservation are taken back."""
    with transaction.atomic():
        _billing_lock(exclusive=False)
        open_now = BillableInterval.objects.filter(notebook=notebook, ended_at__isnull=True)
        for interval in open_now:
            interval.records.all().delete()
            interval.delete()
        if at is not None:
            open_interval(notebook, at)
            _bill(
                BillableInterval.objects.filter(notebook=notebook, ended_at__isnull=True),
                now=timezone.now(),
            )


def tick(now: datetime | None = None) -> int:
    """Bill every commenced minute of every open interval; returns records written."""
    with transaction.atomic():
        _billing_lock(exclusive=True)
        now = now or timezone.now()
        return _bill(BillableInterval.objects.filter(ended_at__isnull=True), now=now)


def _bill(intervals, *, now: datetime) -> int:
    if connection.vendor == "postgresql":
        return _bill_postgresql(intervals, now)
    return _bill_portable(intervals, now)


_PG_BILL = """
WITH due AS (
    SELECT i.id, i.project_id, i.notebook_id, i.flavor, i.units, i.currency, i.started_at,
           i.unit_price * i.units AS amount,
           COALESCE(
               (SELECT max(r.minute) + 1 FROM billing_usagerecord r WHERE r.interval_id = i.id), 0
           ) AS first_minute,
           GREATEST(0, CEIL(EXTRACT(EPOCH FROM (COALESCE(i.ended_at, %s) - i.started_at)) / 60))::int
               AS upto
    FROM billing_billableinterval i
    WHERE i.id IN ({ids})
)
INSERT INTO billing_usagerecord
    (interval_id, minute, project_id, notebook_id, flavor, units, amount, currency, starts_at)
SELECT d.id, k, d.project_id, d.notebook_id, d.flavor, d.units, d.amount, d.currency,
       d.started_at + k * INTERVAL '1 minute'
FROM due d CROSS JOIN LATERAL generate_series(d.first_minute, d.upto - 1) AS k
ON CONFLICT (interval_id, minute) DO NOTHING
"""


def _bill_postgresql(intervals, now: datetime) -> int:
    ids_sql, ids_params = intervals.values("id").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(_PG_BILL.format(ids=ids_sql), [now, *ids_params])
        return cursor.rowcount


def _bill_portable(intervals, now: datetime) -> int:
    """The same as the PostgreSQL statement, in Python, for SQLite and others."""
    records = []
    for interval in intervals.annotate(last_billed=Max("records__minute")):
        first = 0 if interval.last_billed is None else interval.last_billed + 1
        upto = minutes_commenced(interval.started_at, interval.ended_at or now)
        records += [
            UsageRecord(
                interval=interval,
                minute=minute,
                project_id=interval.project_id,
                notebook_id=interval.notebook_id,
                flavor=interval.flavor,
                units=interval.units,
                amount=interval.minute_amount,
                currency=interval.currency,
                starts_at=interval.started_at + timedelta(minutes=minute),
            )
            for minute in range(first, upto)
        ]
    return len(UsageRecord.objects.bulk_create(records, ignore_conflicts=True, batch_size=2000))


# Cost to date and budgets.


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class Cost:
    amount: Decimal
    currency: str

    def as_dict(self) -> dict:
        return {"amount": str(self.amount), "currency": self.currency}


def cost_to_date(
    *,
    project: Project | None = None,
    notebook: Notebook | None = None,
    notebooks: QuerySet | None = None,
    now: datetime | None = None,
) -> list[Cost]:
    """This month's cost, live: billed records plus the commenced minutes not yet ticked.

    Of a project, of one notebook, or of a set of notebooks together.
    """
    if project is not None:
        scope = {"project": project}
    elif notebooks is not None:
        scope = {"notebook__in": notebooks}
    else:
        scope = {"notebook": notebook}
    return _costs(scope, now).get(None, [])


def costs_to_date(notebooks, *, now: datetime | None = None) -> dict[UUID, list[Cost]]:
    """`cost_to_date` of each notebook (ids, rows or a queryset) by notebook id, in two
    queries whatever their number; a notebook that cost nothing this month is absent."""
    return _costs({"notebook__in": notebooks}, now, by="notebook_id")


def _costs(scope: dict, now: datetime | None, by: str | None = None) -> dict:
    """Costs to date within `scope`, by the value of the field `by` (all together under
    None without one): the month's records summed exactly, plus each open interval's
    commenced minutes that no tick has billed yet."""
    now = now or timezone.now()
    totals: dict = defaultdict(dict)
    records = UsageRecord.objects.filter(starts_at__gte=month_start(now), **scope)
    keys = [by] if by else []
    for row in records.values(*keys, "currency").annotate(total=money_sum()).order_by():
        totals[row[by] if by else None][row["currency"]] = from_sum(row["total"])
    open_intervals = BillableInterval.objects.filter(ended_at__isnull=True, **scope)
    for interval in open_intervals.annotate(billed=Count("records")):
        pending = minutes_commenced(interval.started_at, now) - interval.billed
        if pending > 0:
            amounts = totals[getattr(interval, by) if by else None]
            amounts[interval.currency] = (
                amounts.get(interval.currency, Decimal(0)) + pending * interval.minute_amount
            )
    return {
        key: [Cost(amount, currency) for currency, amount in sorted(amounts.items())]
        for key, amounts in totals.items()
    }


def spent_this_month(budget: Budget, now: datetime) -> Decimal:
    """What the budget's project has spent this month, in the budget's currency."""
    costs = cost_to_date(project=budget.project, now=now)
    return next((c.amount for c in costs if c.currency == budget.currency), Decimal(0))


def budget_status(project: Project, now: datetime | None = None) -> dict | None:
    budget = Budget.objects.filter(project=project).first()
    if budget is None:
        return None
    spent = spent_this_month(budget, now or timezone.now())
    used = (spent / budget.monthly_amount * 100) if budget.monthly_amount else Decimal(100)
    state = (
        "exceeded"
        if spent >= budget.monthly_amount
        else ("warning" if used >= budget.warning_percent else "ok")
    )
    return {
        "monthly_amount": str(budget.monthly_amount),
        "currency": budget.currency,
        "spent": str(spent),
        "used_percent": round(float(used), 1),
        "warning_percent": budget.warning_percent,
        "stop_running": budget.stop_running,
        "state": state,
    }


def check_budget(project: Project) -> None:
    """Refuse new starts once the month's budget is spent."""
    budget = Budget.objects.filter(project=project).first()
    if budget is None:
        return
    spent = spent_this_month(budget, timezone.now())
    if spent >= budget.monthly_amount:
        raise BudgetExceeded(
            f"Project {project.name!r} has spent {spent} {budget.currency} of its monthly budget of "
            f"{budget.monthly_amount} {budget.currency}: new starts are refused until next month "
            "or until an administrator raises the budget."
        )
