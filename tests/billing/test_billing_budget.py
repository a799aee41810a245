"""Monthly budgets: the state shown on the project, refusal of new starts, stopping.

Cost to date counts this month's usage records plus the commenced minutes of
open intervals that no tick has billed yet. Tasks sent on commit are captured,
never sent: no worker runs here.
"""

from datetime import timedelta
from decimal import Decimal
from itertools import count

import pytest
from django.utils import timezone

from nbcloud.billing import services as billing
from nbcloud.billing.models import BillableInterval, Budget, Price
from nbcloud.hosts.models import Host, HostState
from nbcloud.hosts.services import place_queued
from nbcloud.monitoring import limits
from nbcloud.notebooks import services
from nbcloud.notebooks.models import Notebook, NotebookEvent
from nbcloud.notebooks.states import InfoCode, State

pytestmark = pytest.mark.django_db
GIB = 1024**3
M = timedelta(minutes=1)
V100 = Decimal("0.0292")  # ai1-1-gpu, per GPU per minute (catalogue default)
BASE = "/api/v1/projects/alpha/"
_names = count()


def make_notebook(project, *, gpu=1, state=State.STOPPED) -> Notebook:
    return Notebook.objects.create(
        project=project,
        name=f"nb{next(_names)}",
        framework_id="conda",
        framework_version="py311",
        editor_id="jupyterlab",
        flavor="ai1-1-gpu",
        gpu=gpu,
        region="GRA",
        state=state,
        queued_at=timezone.now(),
    )


def this_month(minutes: int) -> timezone.datetime:
    """A start `minutes` (and a bit) ago, but not before this month began."""
    now = timezone.now()
    return max(billing.month_start(now), now - minutes * M - timedelta(seconds=5))


def spend(project, minutes: int, *, gpu: int = 1) -> Notebook:
    """A closed interval this month of exactly `minutes` minutes: minutes x gpu x V100."""
    notebook = make_notebook(project, gpu=gpu)
    start = this_month(minutes)
    billing.open_interval(notebook, start)
    billing.close_interval(notebook, start + minutes * M)
    return notebook


def expensive() -> None:
    """An admin price of 0.60 per V100 per minute: a few minutes spend a budget of 1.00."""
    Price.objects.create(
        flavor="ai1-1-gpu", unit_price="0.60", valid_from=timezone.now() - timedelta(days=400)
    )


def budget(project, amount: str, **fields) -> Budget:
    return Budget.objects.create(project=project, monthly_amount=Decimal(amount), **fields)


def status(api, project="alpha") -> dict:
    reply = api.get(f"/api/v1/projects/{project}/")
    assert reply.status_code == 200, reply.content
    return reply.json()


def spec(name: str) -> dict:
    return {
        "name": name,
        "env": {"framework_id": "pytorch", "editor_id": "jupyterlab"},
        "resources": {"gpu": 1},
    }


def assert_budget_exceeded(reply) -> dict:
    assert reply.status_code == 403, reply.content
    body = reply.json()
    assert set(body) == {"code", "message"}, body
    assert body["code"] == "budget_exceeded"
    assert "budget" in body["message"] and "alpha" in body["message"], body
    return body


def sent(callbacks) -> list[tuple[str, tuple, dict]]:
    """The tasks captured on commit: (name, args, kwargs)."""
    return [(t.name, t.args, t.kwargs) for cb in callbacks for t in cb.tasks]


# The state on the project.


def test_the_project_shows_cost_to_date_and_the_budget_state(alpha, alice_api, bob_api):
    body = status(alice_api)
    assert body["name"] == "alpha"
    assert body["cost_to_date"] == [] and body["budget"] is None

    budget(alpha, "1.00", warning_percent=80)
    spend(alpha, 10)  # 0.292: 29 %
    body = status(bob_api)  # read-only members see it too
    assert body["budget"]["state"] == "ok"
    assert Decimal(body["budget"]["spent"]) == 10 * V100
    assert Decimal(body["budget"]["monthly_amount"]) == 1
    assert body["budget"]["currency"] == "EUR" and body["budget"]["warning_percent"] == 80
    assert [(Decimal(c["amount"]), c["currency"]) for c in body["cost_to_date"]] == [
        (10 * V100, "EUR")
    ]
    assert all(isinstance(c["amount"], str) for c in body["cost_to_date"])  # money: no float

    spend(alpha, 24)  # 34 minutes: 0.9928, 99 %
    assert status(alice_api)["budget"]["state"] == "warning"

    spend(alpha, 1)  # 35 minutes: 1.022
    budget_state = status(alice_api)["budget"]
    assert budget_state["state"] == "exceeded"
    assert Decimal(budget_state["spent"]) == 35 * V100


def test_the_warning_starts_at_warning_percent(alpha, alice_api):
    budget(alpha, "1.00", warning_percent=50)
    spend(alpha, 17)  # 0.4964
    assert status(alice_api)["budget"]["state"] == "ok"
    spend(alpha, 1)  # 0.5256
    assert status(alice_api)["budget"]["state"] == "warning"


def test_spending_exactly_the_budget_reaches_it(alpha, alice_api):
    budget(alpha, str(10 * V100))
    spend(alpha, 10)
    assert status(alice_api)["budget"]["state"] == "exceeded"
    Budget.objects.filter(project=alpha).update(monthly_amount=10 * V100 + Decimal("0.000001"))
    assert status(alice_api)["budget"]["state"] == "warning"


def test_other_projects_do_not_see_the_budget(alpha, charlie_api, bravo):
    budget(alpha, "1.00")
    reply = charlie_api.get(BASE)
    assert reply.status_code == 404
    assert reply.json()["code"] == "not_found"
    assert "budget" not in reply.json()
    assert status(charlie_api, "bravo")["budget"] is None


def test_minutes_not_yet_ticked_count_live(alpha, alice_api):
    budget(alpha, "1.00")
    expensive()
    notebook = make_notebook(alpha, gpu=4, state=State.RUNNING)
    billing.open_interval(notebook, this_month(1))  # 2 minutes begun x 4 GPUs x 0.60: 4.80
    body = status(alice_api)
    assert body["budget"]["state"] == "exceeded"
    assert Decimal(body["cost_to_date"][0]["amount"]) >= 4 * Decimal("0.60")


# Refusing new creates and starts.


def test_creates_and_starts_are_refused_once_the_budget_is_spent(alpha, alice_api):
    budget(alpha, "1.00")
    stopped = alice_api.post(f"{BASE}notebooks/", spec("kept"), format="json").json()
    assert alice_api.post(f"{BASE}notebooks/{stopped['id']}/stop/").status_code == 202
    spend(alpha, 34)  # warning only: still allowed
    reply = alice_api.post(f"{BASE}notebooks/", spec("allowed"), format="json")
    assert reply.status_code == 201, reply.content
    spend(alpha, 1)  # exceeded
    notebooks, events = Notebook.objects.count(), NotebookEvent.objects.count()

    assert_budget_exceeded(alice_api.post(f"{BASE}notebooks/", spec("refused"), format="json"))
    assert_budget_exceeded(alice_api.post(f"{BASE}notebooks/{stopped['id']}/start/"))
    assert Notebook.objects.count() == notebooks
    assert NotebookEvent.objects.count() == events
    assert Notebook.objects.get(pk=stopped["id"]).state == State.STOPPED

    # An administrator raises the budget: allowed again.
    Budget.objects.filter(project=alpha).update(monthly_amount=Decimal("100"))
    reply = alice_api.post(f"{BASE}notebooks/{stopped['id']}/start/")
    assert reply.status_code == 202, reply.content
    assert reply.json()["status"]["state"] == "QUEUED"
    assert alice_api.post(f"{BASE}notebooks/", spec("later"), format="json").status_code == 201


def test_the_budget_of_one_project_does_not_refuse_another(alpha, charlie_api):
    budget(alpha, "0.01")
    spend(alpha, 1)
    reply = charlie_api.post("/api/v1/projects/bravo/notebooks/", spec("b"), format="json")
    assert reply.status_code == 201, reply.content


def test_open_minutes_not_yet_ticked_refuse_a_start_too(alpha, alice_api):
    budget(alpha, "1.00")
    expensive()
    running = make_notebook(alpha, gpu=2, state=State.RUNNING)  # 2 of the 4 GPUs of the quota
    billing.open_interval(running, this_month(1))  # 2 minutes begun x 2 GPUs x 0.60: 2.40
    assert_budget_exceeded(alice_api.post(f"{BASE}notebooks/", spec("refused"), format="json"))


# Stopping running notebooks.


@pytest.fixture
def running(alpha, django_capture_on_commit_callbacks):
    """A RUNNING notebook placed on a host, its interval opened by the placement."""
    Host.objects.create(
        name="gra-1",
        region="GRA",
        state=HostState.READY,
        cpus=64,
        memory_bytes=512 * GIB,
        disk_bytes=1000 * GIB,
        gpus=[
            {"index": i, "uuid": f"GPU-{i}", "model": "Tesla V100S", "memory_bytes": 1}
            for i in range(4)
        ],
    )
    notebook = make_notebook(alpha, gpu=1, state=State.QUEUED)
    with django_capture_on_commit_callbacks(execute=False):
        place_queued()
    notebook.refresh_from_db()
    services.mark_running(notebook, editor_url="http://127.0.0.1:1", runtime_state={})
    return notebook


def test_a_tick_stops_running_notebooks_once_the_budget_is_spent(
    alpha, running, django_capture_on_commit_callbacks
):
    budget(alpha, "1.00", stop_running=True)
    queued = make_notebook(alpha, state=State.QUEUED)
    spend(alpha, 40)  # 1.168
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        tick()

    running.refresh_from_db()
    assert running.state == State.STOPPING
    assert running.info_code == InfoCode.BUDGET_EXCEEDED
    event = running.events.order_by("-at", "-id").first()
    assert (event.from_state, event.to_state) == (State.RUNNING, State.STOPPING)
    assert event.code == InfoCode.BUDGET_EXCEEDED and event.actor == "system"
    assert "budget" in event.message.lower() and "EUR" in event.message
    assert "saved" in event.message  # and what happens to the workspace
    assert sent(callbacks) == [("notebooks.stop", (str(running.pk),), {"host": "gra-1"})]
    queued.refresh_from_db()
    assert queued.state == State.QUEUED  # nothing runs, nothing to stop

    # A later tick does not stop it twice.
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        tick()
    assert callbacks == []
    assert running.events.filter(code=InfoCode.BUDGET_EXCEEDED).count() == 1

    # The stop completes: STOPPED (not FAILED), billing closed.
    with django_capture_on_commit_callbacks(execute=False):
        services.finish_stop(running, workspace_size=1)
    running.refresh_from_db()
    assert running.state == State.STOPPED
    assert not BillableInterval.objects.filter(notebook=running, ended_at__isnull=True).exists()


def test_without_stop_running_a_tick_stops_nothing(
    alpha, running, django_capture_on_commit_callbacks
):
    budget(alpha, "1.00", stop_running=False)
    spend(alpha, 40)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        tick()
    assert callbacks == []
    running.refresh_from_db()
    assert running.state == State.RUNNING
    assert billing.budget_status(alpha)["state"] == "exceeded"


def test_a_tick_stops_nothing_below_the_budget(alpha, running, django_capture_on_commit_callbacks):
    budget(alpha, "1.00", stop_running=True)
    spend(alpha, 33)  # warning
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        tick()
    assert callbacks == []
    running.refresh_from_db()
    assert running.state == State.RUNNING


def test_the_running_notebook_own_minutes_reach_the_budget(
    alpha, running, django_capture_on_commit_callbacks
):
    budget(alpha, "0.05", stop_running=True)
    # It has run 2 minutes (0.0584) that no tick has billed yet.
    BillableInterval.objects.filter(notebook=running).update(started_at=this_month(1))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        tick()
    running.refresh_from_db()
    assert running.state == State.STOPPING
    assert [name for name, _, _ in sent(callbacks)] == ["notebooks.stop"]


def test_another_project_budget_does_not_stop_this_one(
    alpha, bravo, running, django_capture_on_commit_callbacks
):
    budget(bravo, "0.01", stop_running=True)
    spend(bravo, 5)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        tick()
    assert callbacks == []
    running.refresh_from_db()
    assert running.state == State.RUNNING


def tick() -> None:
    """What beat's billing tick does: bill the minutes, then stop what the budgets say."""
    now = timezone.now()
    billing.tick(now)
    limits.enforce_budgets(now)
