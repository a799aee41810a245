"""Every list of the API answers in a fixed number of queries, however long it is.

Each list is read with 1 row and with 100 rows (a full default page) under the
same bound: a query per row (an N+1) stays under it at 1 row and breaks it at
100. The rows carry what the answer shows (a creator, a host, usage in two
currencies, a granting user), so every relation a serializer follows is there.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.utils import timezone
from rest_framework.test import APIClient

from nbcloud.billing import services as billing
from nbcloud.billing.models import BillableInterval
from nbcloud.hosts.models import Host
from nbcloud.notebooks.models import Backup, Notebook, NotebookEvent, NotebookGrant
from nbcloud.notebooks.states import InfoCode, State
from nbcloud.projects.models import ApiToken, Datastore, Project, Role

pytestmark = pytest.mark.django_db

SIZES = [1, 100]
PROJECT = "/api/v1/projects/alpha/"
NOTEBOOKS = f"{PROJECT}notebooks/"
OVH = "/ovhai/v1/"
_serial = count()


def _client(token: str | None = None, user=None) -> APIClient:
    client = APIClient()
    if token:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    if user:
        client.force_login(user)
    return client


@dataclass
class World:
    """Alpha, its owner alice with her token, a host; and usage in bravo, which no list
    of alpha's may count."""

    alpha: Project
    alice: AbstractBaseUser
    api: APIClient
    host: Host

    def notebooks(self, rows: int, *, labels: dict | None = None) -> list[Notebook]:
        """`rows` running notebooks of alpha, made by alice, on the host, with usage."""
        made = make_notebooks(
            self.alpha, rows, created_by=self.alice, host=self.host, labels=labels
        )
        give_usage(made)
        return made

    def token(self, **fields) -> APIClient:
        _, value = ApiToken.issue(project=self.alpha, user=self.alice, name="t", **fields)
        return _client(value)


@pytest.fixture
def world(alpha, bravo, alice) -> World:
    host = Host.objects.create(
        name="gpu-1", region="GRA", cpus=64, memory_bytes=2**40, disk_bytes=2**42
    )
    give_usage(make_notebooks(bravo, 3))
    return World(alpha=alpha, alice=alice[0], api=_client(alice[1]), host=host)


def make_notebooks(project, rows: int, *, labels=None, **fields) -> list[Notebook]:
    state = State.RUNNING if fields.get("host") else State.STOPPED
    return Notebook.objects.bulk_create(
        Notebook(
            project=project,
            name=f"nb-{next(_serial)}",
            labels=labels or {},
            framework_id="conda",
            framework_version="py311",
            editor_id="jupyterlab",
            flavor="ai1-1-cpu",
            cpu=2,
            region="GRA",
            state=state,
            info_code=InfoCode.OK,
            **fields,
        )
        for _ in range(rows)
    )


def give_usage(notebooks: list[Notebook]) -> None:
    """This month's usage, as the billing code writes it.

    Each notebook but every fourth: an interval of 9 billed minutes, closed.
    Every other notebook: an interval open since 90 s ago, one minute billed by
    a tick and one commenced since (the live part of a cost). Every third
    notebook pays in USD at another price, so costs come in two currencies; so
    every fourth notebook (odd) has no usage at all.
    """
    now = timezone.now()
    month = billing.month_start(now)
    closed, opened = [], []
    for i, notebook in enumerate(notebooks):
        price, currency = (Decimal("0.0007"), "USD") if i % 3 == 0 else (Decimal("0.0005"), "EUR")

        def interval(start, notebook=notebook, price=price, currency=currency):
            return BillableInterval(
                notebook=notebook,
                project_id=notebook.project_id,
                flavor=notebook.flavor,
                units=notebook.units,
                unit_price=price,
                currency=currency,
                started_at=max(month, start),
            )

        if i % 4 != 3:
            closed.append(interval(now - timedelta(minutes=10)))
        if i % 2 == 0:
            opened.append(interval(now - timedelta(seconds=90)))
    BillableInterval.objects.bulk_create(closed + opened)
    billing.tick(now - timedelta(seconds=60))
    BillableInterval.objects.filter(pk__in=[i.pk for i in closed]).update(
        ended_at=now - timedelta(seconds=60)
    )


def has_usage(i: int) -> bool:
    """Whether `give_usage` gives the i-th notebook any."""
    return i % 4 != 3


def _page(body: dict) -> int:
    assert body["count"] == len(body["results"]), "one page holds every row"
    return len(body["results"])


def _items(body: dict) -> int:
    return len(body["items"])


@dataclass(frozen=True)
class Endpoint:
    """A list: `make(world, rows)` makes its rows and returns (client, URL, how many rows
    the answer lists); `rows` counts the rows of an answer; `bound` is its most queries at
    any length."""

    make: Callable[[World, int], tuple[APIClient, str, int]]
    rows: Callable[[object], int]
    bound: int


def _notebooks(world: World, rows: int):
    world.notebooks(rows)
    return world.api, NOTEBOOKS, rows


def _notebooks_of_a_scoped_token(world: World, rows: int):
    world.notebooks(rows, labels={"team": "vision"})
    world.notebooks(2, labels={"team": "nlp"})
    return world.token(role=Role.READ, label_selector="team=vision"), NOTEBOOKS, rows


def _notebooks_of_a_guest(world: World, rows: int):
    guest = get_user_model().objects.create(username="guest")
    shared = world.notebooks(rows)
    world.notebooks(2)
    NotebookGrant.objects.bulk_create(
        NotebookGrant(notebook=nb, user=guest, role="read", granted_by=world.alice) for nb in shared
    )
    return _client(user=guest), NOTEBOOKS, rows


def _one_notebook(world: World) -> Notebook:
    (notebook,) = world.notebooks(1)
    return notebook


def _events(world: World, rows: int):
    notebook = _one_notebook(world)
    NotebookEvent.objects.bulk_create(
        NotebookEvent(
            notebook=notebook,
            actor="alice",
            from_state=State.QUEUED,
            to_state=State.STARTING,
            code=InfoCode.OK,
        )
        for _ in range(rows)
    )
    return world.api, f"{NOTEBOOKS}{notebook.pk}/events/", rows


def _backups(world: World, rows: int, prefix: str = NOTEBOOKS, suffix: str = "backups/"):
    notebook = _one_notebook(world)
    Backup.objects.bulk_create(
        Backup(notebook=notebook, storage_name=f"b{i}", size=10, sha256="0" * 64, workspace_size=5)
        for i in range(rows)
    )
    return world.api, f"{prefix}{notebook.pk}/{suffix}", rows


def _grants(world: World, rows: int):
    notebook = _one_notebook(world)
    granters = [world.alice, None]
    users = get_user_model().objects.bulk_create(
        get_user_model()(username=f"user-{i}") for i in range(rows)
    )
    NotebookGrant.objects.bulk_create(
        NotebookGrant(notebook=notebook, user=user, role="read", granted_by=granters[i % 2])
        for i, user in enumerate(users)
    )
    return world.api, f"{NOTEBOOKS}{notebook.pk}/grants/", rows


def _tokens(world: World, rows: int, url: str = f"{PROJECT}tokens/"):
    owners = get_user_model().objects.bulk_create(
        get_user_model()(username=f"owner-{i}") for i in range(rows - 1)
    )
    for owner in owners:  # alice's own token is the first row
        ApiToken.issue(project=world.alpha, user=owner, name=owner.username, role=Role.READ)
    return world.api, url, rows


def _datastores(world: World, rows: int):
    stores = []
    for i in range(rows):
        store = Datastore(project=world.alpha, alias=f"s{i}", type="s3", access_key="k")
        store.set_secrets({"secret_key": "s"})
        stores.append(store)
    Datastore.objects.bulk_create(stores)
    return world.api, f"{PROJECT}datastores/", rows


def _usage(world: World, rows: int):
    billed = [nb for i, nb in enumerate(world.notebooks(rows)) if has_usage(i)]
    return world.api, f"{PROJECT}usage/?group_by=notebook", len(billed)


def _notebook_usage(world: World, rows: int):
    (notebook,) = make_notebooks(world.alpha, 1)
    start = datetime(2026, 3, 5, 10, tzinfo=UTC)
    billing.open_interval(notebook, start)
    billing.close_interval(notebook, start + timedelta(minutes=rows))
    march = "from=2026-03-01&to=2026-04-01&group_by=flavor"
    return world.api, f"{NOTEBOOKS}{notebook.pk}/usage/?{march}", rows


def _ovh_notebooks(world: World, rows: int):
    world.notebooks(rows)
    return world.api, f"{OVH}notebook", rows


# The bounds are what each list takes today: the token's look-up and its last use, the
# project, the caller's role where a token does not carry it, a page's count and rows, the
# notebook of a notebook's list, and the costs to date of a page of notebooks (two).
ENDPOINTS = {
    "notebooks": Endpoint(_notebooks, _page, 7),
    "notebooks of a label-scoped token": Endpoint(_notebooks_of_a_scoped_token, _page, 8),
    "notebooks shared with a guest": Endpoint(_notebooks_of_a_guest, _page, 9),
    "notebook events": Endpoint(_events, _page, 6),
    "notebook backups": Endpoint(_backups, _page, 6),
    "notebook grants": Endpoint(_grants, len, 5),
    "tokens": Endpoint(_tokens, _page, 5),
    "datastores": Endpoint(_datastores, _page, 5),
    "usage": Endpoint(_usage, lambda body: len(body["rows"]), 4),
    "notebook usage": Endpoint(_notebook_usage, lambda body: body["rows"][0]["minutes"], 5),
    "ovhai notebooks": Endpoint(_ovh_notebooks, _items, 7),
    "ovhai backups": Endpoint(
        lambda world, rows: _backups(world, rows, f"{OVH}notebook/", "backup"), _items, 6
    ),
    "ovhai tokens": Endpoint(lambda world, rows: _tokens(world, rows, f"{OVH}token"), _items, 5),
}


@pytest.mark.parametrize("rows", SIZES)
@pytest.mark.parametrize("name", ENDPOINTS)
def test_a_list_costs_the_same_queries_at_1_and_100_rows(
    world, name, rows, django_assert_max_num_queries
):
    endpoint = ENDPOINTS[name]
    api, url, expected = endpoint.make(world, rows)
    with django_assert_max_num_queries(endpoint.bound):
        reply = api.get(url)
    assert reply.status_code == 200, reply.content
    assert endpoint.rows(reply.json()) == expected


# The costs to date a list shows are each notebook's own, to the last digit.


def test_the_list_shows_each_notebook_as_the_notebook_itself_does(world):
    notebooks = world.notebooks(12)  # both currencies, open and closed intervals, none
    reply = world.api.get(NOTEBOOKS)
    assert reply.status_code == 200, reply.content
    listed = {item["id"]: item for item in reply.json()["results"]}
    assert len(listed) == len(notebooks)
    currencies = set()
    for i, notebook in enumerate(notebooks):
        single = world.api.get(f"{NOTEBOOKS}{notebook.pk}/")
        assert single.status_code == 200, single.content
        assert listed[str(notebook.pk)] == single.json()  # cost to date and all
        costs = single.json()["status"]["cost_to_date"]
        assert costs == [c.as_dict() for c in billing.cost_to_date(notebook=notebook)]
        assert bool(costs) == has_usage(i), (i, costs)
        currencies |= {c["currency"] for c in costs}
    assert currencies == {"EUR", "USD"}


def test_ovh_list_shows_each_notebook_as_the_notebook_itself_does(world):
    notebooks = world.notebooks(4)
    reply = world.api.get(f"{OVH}notebook")
    assert reply.status_code == 200, reply.content
    listed = {item["id"]: item for item in reply.json()["items"]}
    for notebook in notebooks:
        single = world.api.get(f"{OVH}notebook/{notebook.pk}")
        assert single.status_code == 200, single.content
        assert listed[str(notebook.pk)] == single.json()


T = datetime(2026, 3, 20, 12, tzinfo=UTC)


@pytest.fixture
def march(alpha):
    """Three notebooks' usage in March 2026, looked at on the 20th at noon (T).

    cpu (2 vCPUs at 0.0005 EUR): 5 minutes from 23:58 on 28 February, 3 of them in
        March (0.003 EUR); and an interval open since T - 150 s, 1 minute billed by a
        tick and 2 commenced since (0.003 EUR): 0.006 EUR.
    gpu (1 H100 at 0.05 USD, 0.04 EUR from the 15th): 3 minutes on the 10th
        (0.15 USD); an interval open since T - 60 s, nothing billed yet (0.04 EUR).
    idle: nothing.
    """
    from nbcloud.billing.models import Price

    Price.objects.create(
        flavor="h100-1-gpu",
        unit_price="0.05",
        currency="USD",
        valid_from=datetime(2026, 1, 1, tzinfo=UTC),
    )
    Price.objects.create(
        flavor="h100-1-gpu",
        unit_price="0.04",
        currency="EUR",
        valid_from=datetime(2026, 3, 15, tzinfo=UTC),
    )
    (cpu, idle) = make_notebooks(alpha, 2)
    (gpu,) = make_notebooks(alpha, 1)
    Notebook.objects.filter(pk=gpu.pk).update(flavor="h100-1-gpu", cpu=0, gpu=1)
    gpu.refresh_from_db()
    billing.open_interval(cpu, datetime(2026, 2, 28, 23, 58, tzinfo=UTC))
    billing.close_interval(cpu, datetime(2026, 3, 1, 0, 3, tzinfo=UTC))
    billing.open_interval(gpu, datetime(2026, 3, 10, 10, tzinfo=UTC))
    billing.close_interval(gpu, datetime(2026, 3, 10, 10, 2, 0, 500_000, tzinfo=UTC))
    billing.open_interval(cpu, T - timedelta(seconds=150))
    billing.open_interval(gpu, T - timedelta(seconds=60))
    billing.tick(T - timedelta(seconds=100))
    return cpu, gpu, idle


def test_costs_of_many_notebooks_are_each_notebook_s_cost(march):
    cpu, gpu, idle = march
    expected = {
        cpu.pk: [{"amount": "0.006000", "currency": "EUR"}],
        gpu.pk: [
            {"amount": "0.040000", "currency": "EUR"},
            {"amount": "0.150000", "currency": "USD"},
        ],
    }
    costs = billing.costs_to_date([cpu.pk, gpu.pk, idle.pk], now=T)
    assert {pk: [c.as_dict() for c in found] for pk, found in costs.items()} == expected
    for notebook in (cpu, gpu):
        assert billing.cost_to_date(notebook=notebook, now=T) == costs[notebook.pk]
    assert billing.cost_to_date(notebook=idle, now=T) == []
    together = billing.cost_to_date(notebooks=Notebook.objects.filter(project=cpu.project), now=T)
    assert [c.as_dict() for c in together] == [
        {"amount": "0.046000", "currency": "EUR"},
        {"amount": "0.150000", "currency": "USD"},
    ]
    assert together == billing.cost_to_date(project=cpu.project, now=T)


# A label-scoped token's project shows the cost of its notebooks, summed at once.


@pytest.mark.parametrize("rows", SIZES)
def test_a_scoped_token_s_project_cost_costs_the_same_queries_at_1_and_100_notebooks(
    world, rows, django_assert_max_num_queries
):
    mine = world.notebooks(rows, labels={"team": "vision"})
    world.notebooks(3, labels={"team": "nlp"})
    api = world.token(role=Role.READ, label_selector="team=vision")
    with django_assert_max_num_queries(7):
        reply = api.get(PROJECT)
    assert reply.status_code == 200, reply.content
    totals: dict[str, Decimal] = {}
    for notebook in mine:
        for cost in billing.cost_to_date(notebook=notebook):
            totals[cost.currency] = totals.get(cost.currency, Decimal(0)) + cost.amount
    shown = {c["currency"]: Decimal(c["amount"]) for c in reply.json()["cost_to_date"]}
    assert shown == totals and shown


# The capabilities come from the catalogue, not the database: the token's look-up and
# its last use are all they read (OVH's quota adds the project and its sums).


@pytest.mark.parametrize(
    "url, bound",
    [
        *[
            (f"/api/v1/capabilities/{kind}/", 2)
            for kind in ("frameworks", "editors", "flavors", "regions")
        ],
        *[
            (f"{OVH}capabilities/{kind}", 2)
            for kind in ("notebook/framework", "notebook/editor", "flavor")
        ],
        (f"{OVH}capabilities/quota", 4),
    ],
)
def test_capabilities_read_no_rows(world, url, bound, django_assert_max_num_queries):
    with django_assert_max_num_queries(bound):
        reply = world.api.get(url)
    assert reply.status_code == 200, reply.content
    assert reply.json()
