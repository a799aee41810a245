"""The usage API: billed minutes, unit-minutes and cost, grouped, filtered, as CSV.

    GET /api/v1/projects/{p}/usage/?from=&to=&group_by=notebook|day|flavor[&format=csv]
    GET /api/v1/projects/{p}/notebooks/{id}/usage/

and the live `cost_to_date` of a notebook's status.
"""

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count

import pytest
from django.utils import timezone

from nbcloud.billing import services as billing
from nbcloud.billing.models import Price
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import State

pytestmark = pytest.mark.django_db
USAGE = "/api/v1/projects/alpha/usage/"
MARCH = {"from": "2026-03-01", "to": "2026-04-01"}
V100 = Decimal("0.0292")  # ai1-1-gpu per GPU per minute (catalogue default)
VCPU = Decimal("0.0005")  # ai1-1-cpu per vCPU per minute
_names = count()


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def make_notebook(project, name, *, flavor, gpu=0, cpu=0, state=State.STOPPED) -> Notebook:
    return Notebook.objects.create(
        project=project,
        name=name,
        framework_id="conda",
        framework_version="py311",
        editor_id="jupyterlab",
        flavor=flavor,
        gpu=gpu,
        cpu=cpu,
        region="GRA",
        state=state,
    )


def bill(notebook, start: datetime, end: datetime) -> None:
    billing.open_interval(notebook, start)
    billing.close_interval(notebook, end)


@pytest.fixture
def march(alpha, bravo):
    """Usage in March 2026.

    train (2 V100s): 23:58:30 on the 10th to 00:01:30 on the 11th, 3 minutes,
        2 of them on the 10th: 6 GPU-minutes, 0.1752 EUR.
    etl (4 vCPUs): 10:00:00 to 10:04:00.5 on the 11th, 5 minutes: 20 vCPU-minutes, 0.0100 EUR.
    big (1 H100 at an admin price in USD): 2 minutes on the 12th, 0.10 USD.
    bravo's notebook: never seen from alpha.
    """
    Price.objects.create(
        flavor="h100-1-gpu", unit_price="0.05", currency="USD", valid_from=utc(2026, 1, 1)
    )
    train = make_notebook(alpha, "train", flavor="ai1-1-gpu", gpu=2)
    etl = make_notebook(alpha, "etl", flavor="ai1-1-cpu", cpu=4)
    big = make_notebook(alpha, "big", flavor="h100-1-gpu", gpu=1)
    other = make_notebook(bravo, "other", flavor="ai1-1-gpu", gpu=1)
    bill(train, utc(2026, 3, 10, 23, 58, 30), utc(2026, 3, 11, 0, 1, 30))
    bill(etl, utc(2026, 3, 11, 10, 0), utc(2026, 3, 11, 10, 4, 0, 500_000))
    bill(big, utc(2026, 3, 12, 8, 0), utc(2026, 3, 12, 8, 2))
    bill(other, utc(2026, 3, 11, 10, 0), utc(2026, 3, 11, 10, 10))
    return {"train": train, "etl": etl, "big": big, "other": other}


def get(api, url=USAGE, **params):
    reply = api.get(url, params)
    assert reply.status_code == 200, reply.content
    return reply.json()


def money(rows, key) -> dict:
    """Rows by `key`, with cost as a Decimal (it must be a string on the wire: no float)."""
    out = {}
    for row in rows:
        assert isinstance(row["cost"], str), row
        out[row[key]] = (row["minutes"], row["units"], Decimal(row["cost"]), row["currency"])
    return out


def test_usage_by_notebook(alice_api, march):
    body = get(alice_api, **MARCH, group_by="notebook")
    assert body["group_by"] == "notebook"
    assert {row["notebook_id"] for row in body["rows"]} == {
        str(march[n].pk) for n in ("train", "etl", "big")
    }
    assert money(body["rows"], "notebook_name") == {
        "train": (3, 6, 6 * V100, "EUR"),
        "etl": (5, 20, 20 * VCPU, "EUR"),
        "big": (2, 2, Decimal("0.10"), "USD"),
    }
    for row in body["rows"]:
        assert set(row) == {
            "notebook_id",
            "notebook_name",
            "minutes",
            "units",
            "cost",
            "currency",
        }


def test_usage_groups_by_notebook_by_default(alice_api, march):
    assert get(alice_api, **MARCH)["group_by"] == "notebook"


def test_usage_by_day_splits_at_midnight_utc(alice_api, march):
    rows = get(alice_api, **MARCH, group_by="day")["rows"]
    assert money(rows, "day") == {
        "2026-03-10": (2, 4, 4 * V100, "EUR"),
        "2026-03-11": (6, 22, 2 * V100 + 20 * VCPU, "EUR"),
        "2026-03-12": (2, 2, Decimal("0.10"), "USD"),
    }


def test_usage_by_flavor(alice_api, march):
    rows = get(alice_api, **MARCH, group_by="flavor")["rows"]
    assert money(rows, "flavor") == {
        "ai1-1-gpu": (3, 6, 6 * V100, "EUR"),
        "ai1-1-cpu": (5, 20, 20 * VCPU, "EUR"),
        "h100-1-gpu": (2, 2, Decimal("0.10"), "USD"),
    }


def test_a_long_interval_costs_an_exact_decimal(alice_api, alpha):
    """91 records of 0.0292: the sum is 2.6572, not a float's 2.65719999999999."""
    notebook = make_notebook(alpha, "long", flavor="ai1-1-gpu", gpu=1)
    bill(notebook, utc(2026, 3, 1, 9), utc(2026, 3, 1, 10, 30, 1))
    (row,) = get(alice_api, **MARCH, group_by="flavor")["rows"]
    assert (row["minutes"], row["units"]) == (91, 91)
    assert Decimal(row["cost"]) == 91 * V100
    assert row["cost"].rstrip("0") == "2.6572"


def test_from_and_to_select_the_minutes_that_start_in_between(alice_api, march):
    # From midnight on the 11th (a date) to 10:02 (excluded), given with another offset.
    rows = get(
        alice_api, **{"from": "2026-03-11", "to": "2026-03-11T11:02:00+01:00"}, group_by="notebook"
    )["rows"]
    assert money(rows, "notebook_name") == {
        "train": (1, 2, 2 * V100, "EUR"),
        "etl": (2, 8, 8 * VCPU, "EUR"),
    }
    rows = get(alice_api, **{"from": "2026-03-12T08:01:00Z", "to": "2026-03-13"})["rows"]
    assert money(rows, "notebook_name") == {"big": (1, 1, Decimal("0.05"), "USD")}


def test_without_from_and_to_it_is_this_month_until_now(alice_api, alpha, march):
    notebook = make_notebook(alpha, "now", flavor="ai1-1-cpu", cpu=1)
    now = timezone.now()
    start = max(billing.month_start(now), now - timedelta(minutes=3))
    bill(notebook, start, start + timedelta(seconds=30))
    body = get(alice_api)
    assert money(body["rows"], "notebook_name") == {"now": (1, 1, VCPU, "EUR")}


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"group_by": "week"}, "group_by"),
        ({"group_by": "notebook;drop"}, "group_by"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-03-01T25:00"}, "to"),
        ({"from": "2026-13-45"}, "from"),
        ({"to": "2026-02-30"}, "to"),
    ],
)
def test_a_bad_parameter_is_a_400_in_the_error_shape(alice_api, march, params, names):
    reply = alice_api.get(USAGE, {**MARCH, **params})
    assert reply.status_code == 400, reply.content
    body = reply.json()
    assert set(body) <= {"code", "message", "fields"} and {"code", "message"} <= set(body)
    assert body["code"] == "invalid"
    assert names in body["message"], body


def test_csv_has_a_header_row_and_one_line_per_group(alice_api, march):
    reply = alice_api.get(USAGE, {**MARCH, "group_by": "flavor", "format": "csv"})
    assert reply.status_code == 200, reply.content
    assert reply["Content-Type"].startswith("text/csv")
    lines = list(csv.reader(io.StringIO(reply.content.decode())))
    assert lines[0] == ["flavor", "minutes", "units", "cost", "currency"]
    by_flavor = {line[0]: line[1:] for line in lines[1:]}
    assert set(by_flavor) == {"ai1-1-gpu", "ai1-1-cpu", "h100-1-gpu"}
    minutes, units, cost, currency = by_flavor["ai1-1-gpu"]
    assert (minutes, units, Decimal(cost), currency) == ("3", "6", 6 * V100, "EUR")


def test_csv_of_a_period_without_usage_still_has_its_header(alice_api, march):
    reply = alice_api.get(
        USAGE, {"from": "2025-01-01", "to": "2025-02-01", "group_by": "day", "format": "csv"}
    )
    assert reply.status_code == 200, reply.content
    assert reply["Content-Type"].startswith("text/csv")
    lines = list(csv.reader(io.StringIO(reply.content.decode())))
    assert lines == [["day", "minutes", "units", "cost", "currency"]]


def test_csv_by_notebook(alice_api, march):
    reply = alice_api.get(USAGE, {**MARCH, "format": "csv"})
    lines = list(csv.reader(io.StringIO(reply.content.decode())))
    assert lines[0] == ["notebook_id", "notebook_name", "minutes", "units", "cost", "currency"]
    assert sorted(line[1] for line in lines[1:]) == ["big", "etl", "train"]


# Who may read it.


def test_read_only_members_may_read_usage(bob_api, march):
    assert len(get(bob_api, **MARCH)["rows"]) == 3


def test_another_project_gets_404(charlie_api, march):
    for url in (USAGE, f"/api/v1/projects/alpha/notebooks/{march['train'].pk}/usage/"):
        reply = charlie_api.get(url, MARCH)
        assert reply.status_code == 404, url
        assert reply.json()["code"] == "not_found"
    # Its own project's URL with alpha's notebook: 404 too.
    reply = charlie_api.get(f"/api/v1/projects/bravo/notebooks/{march['train'].pk}/usage/")
    assert reply.status_code == 404
    # And its own usage shows only its own notebook.
    rows = get(charlie_api, "/api/v1/projects/bravo/usage/", **MARCH)["rows"]
    assert [row["notebook_name"] for row in rows] == ["other"]


def test_anonymous_gets_401(client, march):
    assert client.get(USAGE).status_code == 401


# One notebook.


def test_notebook_usage(alice_api, march):
    url = f"/api/v1/projects/alpha/notebooks/{march['train'].pk}/usage/"
    rows = get(alice_api, url, **MARCH, group_by="day")["rows"]
    assert money(rows, "day") == {
        "2026-03-10": (2, 4, 4 * V100, "EUR"),
        "2026-03-11": (1, 2, 2 * V100, "EUR"),
    }
    rows = get(alice_api, url, **MARCH)["rows"]
    assert [row["notebook_name"] for row in rows] == ["train"]


def test_notebook_usage_of_an_unknown_notebook_is_404(alice_api, march):
    reply = alice_api.get(
        "/api/v1/projects/alpha/notebooks/00000000-0000-0000-0000-000000000000/usage/"
    )
    assert reply.status_code == 404


def test_live_cost_to_date_includes_minutes_not_yet_ticked(alice_api, alpha):
    notebook = make_notebook(alpha, "live", flavor="ai1-1-gpu", gpu=2, state=State.RUNNING)
    now = timezone.now()
    start = max(billing.month_start(now), now - timedelta(seconds=150))  # 3 minutes begun
    billing.open_interval(notebook, start)
    expected = 3 * 2 * V100

    def shown():
        reply = alice_api.get(f"/api/v1/projects/alpha/notebooks/{notebook.pk}/")
        assert reply.status_code == 200, reply.content
        (cost,) = reply.json()["status"]["cost_to_date"]
        assert isinstance(cost["amount"], str) and cost["currency"] == "EUR"
        return Decimal(cost["amount"])

    assert shown() == expected  # nothing ticked yet
    assert get(alice_api)["rows"] == []  # usage lists billed minutes only
    billing.tick(start + timedelta(seconds=150))
    assert shown() == expected  # ticked: the same, not twice
    assert len(get(alice_api)["rows"]) == 1
    project = get(alice_api, "/api/v1/projects/alpha/")
    assert [(Decimal(c["amount"]), c["currency"]) for c in project["cost_to_date"]] == [
        (expected, "EUR")
    ]


# The admin's view of the same numbers.


def test_admin_shows_exact_totals(admin_client, alpha):
    notebook = make_notebook(alpha, "long", flavor="ai1-1-gpu", gpu=1)
    bill(notebook, utc(2026, 3, 1, 9), utc(2026, 3, 1, 10, 30, 1))  # 91 minutes
    reply = admin_client.get("/admin/billing/billableinterval/")
    assert reply.status_code == 200
    assert "2.657200 EUR" in reply.content.decode()
    reply = admin_client.get("/admin/billing/usagerecord/")
    assert reply.status_code == 200
    # One total per currency, not one per record.
    assert "Total of the selection: 2.657200 EUR (91 unit-minutes)<" in reply.content.decode()
