"""Where notices come from: a notebook that becomes FAILED, an idle warning and an idle
stop, a budget's warning level and the budget itself (once a month), a lost host.
Each one reaches a webhook on loopback; delivery is called as the worker would."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from nbcloud.billing import services as billing
from nbcloud.billing.models import Budget
from nbcloud.hosts import services as hosts
from nbcloud.hosts.models import Host
from nbcloud.monitoring import limits
from nbcloud.notebooks import services as notebooks
from nbcloud.notebooks.states import InfoCode, State
from nbcloud.notices import services
from nbcloud.notices.models import Delivery, Notice, NoticeTarget
from support.factories import make_host, make_notebook, make_queued_notebook

pytestmark = pytest.mark.django_db


@pytest.fixture
def hook(alpha, webhook_receiver, loopback_allowed):
    target = NoticeTarget(project=alpha, name="ops", type="webhook", url=webhook_receiver.url())
    target.new_secret()
    target.save()
    return target


def delivered(receiver) -> list[dict]:
    """Deliver every pending delivery (as the worker would) and return what arrived."""
    for pk in Delivery.objects.filter(state="PENDING").order_by("pk").values_list("pk", flat=True):
        services.deliver(pk)
    return [r.json() for r in receiver.requests]


def test_a_notebook_that_fails_tells_its_project(alpha, hook, webhook_receiver):
    notebook = make_notebook(alpha, name="train", state=State.STARTING)
    notebooks.fail_start(notebook, "The image could not be pulled.")
    [body] = delivered(webhook_receiver)
    assert body["kind"] == "notebook.failed"
    assert body["subject"] == "Notebook train FAILED"
    assert body["message"] == "The image could not be pulled."
    assert body["data"]["notebook"] == {
        "id": str(notebook.pk),
        "name": "train",
        "state": "FAILED",
        "info": {"code": "START_FAILED", "message": "The image could not be pulled."},
    }
    assert body["data"]["from_state"] == "STARTING"
    assert body["data"]["url"].endswith(f"/projects/alpha/notebooks/{notebook.pk}/")


def test_other_changes_of_state_tell_nobody(alpha, hook):
    notebook = make_notebook(alpha, name="train", state=State.STOPPED)
    notebooks.transition(notebook, State.QUEUED, actor="alice", code=InfoCode.USER_START)
    assert not Notice.objects.exists()


@pytest.fixture
def running(alpha):
    host = Host.objects.create(name="h1", region="GRA", cpus=8, memory_bytes=1, disk_bytes=1)
    started = timezone.now() - timedelta(minutes=30)
    return make_notebook(alpha, name="idler", state="RUNNING", host=host, last_started_at=started)


def test_an_idle_warning_then_an_idle_stop(
    running, hook, webhook_receiver, settings, django_capture_on_commit_callbacks
):
    settings.NBCLOUD_IDLE_WARNING = 120
    now = timezone.now()
    with django_capture_on_commit_callbacks(execute=False):
        limits.apply_idle_timeout(running, now - timedelta(seconds=500), 600, now)
        limits.apply_idle_timeout(running, None, 600, now + timedelta(seconds=10))  # once
        limits.apply_idle_timeout(running, None, 600, now + timedelta(seconds=101))
    warning, stop = delivered(webhook_receiver)
    assert warning["kind"] == "notebook.idle_warning"
    assert warning["subject"].startswith("Notebook idler is idle: it stops at")
    assert "keepalive" in warning["message"]
    assert warning["data"]["stops_at"] == (now + timedelta(seconds=100)).isoformat()
    assert stop["kind"] == "notebook.idle_stopped"
    assert stop["subject"] == "Notebook idler stopped: idle for 10 min 1 s"
    assert "the workspace is saved" in stop["message"]
    assert stop["data"]["notebook"]["state"] == "STOPPING"
    assert stop["data"]["notebook"]["info"]["code"] == "IDLE_TIMEOUT"
    assert warning["data"]["notebook"]["info"]["code"] == "IDLE_WARNING"
    running.refresh_from_db()
    assert running.state == "STOPPING"


def spend(alpha, amount: Decimal) -> None:
    """A closed interval this month costing at least `amount`."""
    notebook = make_notebook(alpha, name=f"spent-{amount}", state=State.STOPPED)
    start = billing.month_start(timezone.now())
    interval = billing.open_interval(notebook, start)
    minutes = int(amount / interval.minute_amount) + 1
    billing.close_interval(notebook, start + timedelta(minutes=minutes))


def test_a_budget_warns_once_then_says_it_is_spent_once(
    alpha, hook, webhook_receiver, django_capture_on_commit_callbacks
):
    Budget.objects.create(project=alpha, monthly_amount=Decimal("1.00"), warning_percent=50)
    now = timezone.now()
    limits.enforce_budgets(now)
    assert not Notice.objects.exists()  # nothing spent yet
    spend(alpha, Decimal("0.60"))
    limits.enforce_budgets(now)
    limits.enforce_budgets(now)
    spend(alpha, Decimal("0.50"))
    with django_capture_on_commit_callbacks(execute=False):
        limits.enforce_budgets(now)
        limits.enforce_budgets(now)
    warning, spent = delivered(webhook_receiver)
    assert warning["kind"] == "budget.warning"
    assert warning["subject"] == "50% of the monthly budget of 1.00 EUR spent"
    assert warning["data"]["budget"]["month"] == f"{now:%Y-%m}"
    assert spent["kind"] == "budget.exceeded"
    assert spent["subject"] == "Monthly budget of 1.00 EUR reached"
    assert "new starts are refused; running notebooks go on" in spent["message"]
    assert spent["data"]["url"].endswith("/projects/alpha/usage/")


def test_a_raised_budget_that_is_spent_again_tells_again(alpha, hook):
    budget = Budget.objects.create(project=alpha, monthly_amount=Decimal("0.10"))
    spend(alpha, Decimal("0.20"))
    limits.enforce_budgets(timezone.now())
    budget.monthly_amount = Decimal("0.15")
    budget.save()
    limits.enforce_budgets(timezone.now())
    assert Notice.objects.filter(kind="budget.exceeded").count() == 2


def test_a_budget_that_stops_notebooks_says_so(
    alpha, hook, running, django_capture_on_commit_callbacks
):
    Budget.objects.create(project=alpha, monthly_amount=Decimal("0.10"), stop_running=True)
    spend(alpha, Decimal("0.20"))
    with django_capture_on_commit_callbacks(execute=False):
        limits.enforce_budgets(timezone.now())
    notice = Notice.objects.get()
    assert "running notebooks are being stopped" in notice.message
    running.refresh_from_db()
    assert running.state == "STOPPING"


def test_a_lost_host_tells_each_project_with_notebooks_on_it_once(
    alpha, bravo, hook, webhook_receiver, settings, django_capture_on_commit_callbacks
):
    theirs = NoticeTarget(project=bravo, name="b", type="webhook", url=webhook_receiver.url("/b"))
    theirs.new_secret()
    theirs.save()
    doomed = make_host("doomed", gpus=2, cpus=26, memory_gib=80)
    ours = make_queued_notebook(alpha, "ours", gpu=1)
    other = make_queued_notebook(bravo, "other", gpu=1)
    with django_capture_on_commit_callbacks(execute=False):
        hosts.place_queued()
    Host.objects.filter(pk=doomed.pk).update(
        last_heartbeat_at=timezone.now() - timedelta(minutes=5)
    )
    with django_capture_on_commit_callbacks(execute=False):
        assert hosts.mark_lost(timezone.now() - timedelta(minutes=1)) == ["doomed"]
        assert hosts.mark_lost(timezone.now() - timedelta(minutes=1)) == []
    bodies = delivered(webhook_receiver)
    assert sorted(b["project"] for b in bodies) == ["alpha", "bravo"]
    mine = next(b for b in bodies if b["project"] == "alpha")
    assert mine["kind"] == "host.lost"
    assert mine["subject"] == "Host doomed lost: 1 notebook(s) affected"
    assert mine["data"]["host"]["name"] == "doomed"
    assert mine["data"]["notebooks"] == [
        {"id": str(ours.pk), "name": "ours", "was": "STARTING", "now": "RESTARTING"}
    ]
    assert str(other.pk) not in str(mine)
    [path_b] = [r.path for r in webhook_receiver.requests if r.json()["project"] == "bravo"]
    assert path_b == "/b"
