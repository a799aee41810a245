"""Usage reports: billed minutes grouped by notebook, day or flavor."""

from datetime import UTC, datetime, time

from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from .models import UsageRecord
from .money import from_sum, money_sum
from .services import month_start

GROUPS = {
    "notebook": ("notebook_id", "notebook__name"),
    "day": ("day",),
    "flavor": ("flavor",),
}


def parse_instant(name: str, raw: str | None, default: datetime) -> datetime:
    """A date (midnight UTC) or an ISO 8601 datetime; ValueError names the parameter."""
    if not raw:
        return default
    try:  # well-formed but impossible (2026-02-30, 25:00) raises ValueError too
        value = parse_datetime(raw)
        if value is None and (day := parse_date(raw)) is not None:
            value = datetime.combine(day, time.min)
    except ValueError:
        value = None
    if value is None:
        raise ValueError(f"{name}={raw!r} is not a date (2026-11-01) or an ISO 8601 datetime")
    return value if timezone.is_aware(value) else timezone.make_aware(value, UTC)


def columns(group_by: str) -> list[str]:
    """The fields of a row, in order (a CSV's header, even with no rows)."""
    keys = ["notebook_name" if k == "notebook__name" else k for k in GROUPS[group_by]]
    return [*keys, "minutes", "units", "cost", "currency"]


def usage_rows(records, group_by: str) -> list[dict]:
    records = records.annotate(day=TruncDate("starts_at")) if group_by == "day" else records
    keys = GROUPS[group_by]
    rows = (
        records.values(*keys, "currency")
        .annotate(minutes=Count("id"), units=Sum("units"), cost=money_sum())
        .order_by(*keys, "currency")
    )
    return [
        {
            **{("notebook_name" if k == "notebook__name" else k): row[k] for k in keys},
            "minutes": row["minutes"],
            "units": row["units"],
            "cost": str(from_sum(row["cost"])),
            "currency": row["currency"],
        }
        for row in rows
    ]


def report(project, *, params: dict, notebook=None, notebooks=None) -> dict:
    """The project's usage rows; only `notebook`'s, or only those of `notebooks` (a
    queryset: what the caller may see), when given."""
    now = timezone.now()
    start = parse_instant("from", params.get("from"), month_start(now))
    end = parse_instant("to", params.get("to"), now)
    group_by = params.get("group_by") or "notebook"
    if group_by not in GROUPS:
        raise ValueError(f"group_by={group_by!r} is not one of: {', '.join(GROUPS)}")
    records = UsageRecord.objects.filter(project=project, starts_at__gte=start, starts_at__lt=end)
    if notebook is not None:
        records = records.filter(notebook=notebook)
    if notebooks is not None:
        records = records.filter(notebook__in=notebooks.values("pk"))
    return {"from": start, "to": end, "group_by": group_by, "rows": usage_rows(records, group_by)}


def daily_cost(project, *, start: datetime, end: datetime, by: str, notebooks=None) -> dict:
    """Cost per day between `start` and `end`, one series per notebook or per flavor, for a
    stacked chart: {"days": [date, ...], "series": {name: [amount per day]}, "currency": ...}.

    One currency only (the project's first): amounts in others are left out.
    """
    key = "notebook__name" if by == "notebook" else "flavor"
    records = UsageRecord.objects.filter(project=project, starts_at__gte=start, starts_at__lt=end)
    if notebooks is not None:
        records = records.filter(notebook__in=notebooks.values("pk"))
    rows = list(
        records.annotate(day=TruncDate("starts_at"))
        .values("day", key, "currency")
        .annotate(cost=money_sum())
        .order_by("day", key)
    )
    currency = rows[0]["currency"] if rows else ""
    days = sorted({row["day"] for row in rows})
    index = {day: i for i, day in enumerate(days)}
    series: dict[str, list] = {}
    for row in rows:
        if row["currency"] != currency:
            continue
        amounts = series.setdefault(str(row[key]), [0.0] * len(days))
        amounts[index[row["day"]]] = float(from_sum(row["cost"]))
    return {"days": [d.isoformat() for d in days], "series": series, "currency": currency}
