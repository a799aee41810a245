"""A notebook QUEUED in its host's own scheduler (Slurm): the platform's placer
leaves it there, a user's stop gives the host back, and billing counts only what
the scheduler says ran. Rows only: no Slurm needed."""

from datetime import timedelta

import pytest
from django.utils import timezone

from nbcloud.billing import services as billing
from nbcloud.billing.models import BillableInterval
from nbcloud.hosts.services import place_queued
from nbcloud.notebooks import services
from nbcloud.notebooks.states import InfoCode, State
from support.factories import fresh, make_host, make_queued_notebook

pytestmark = pytest.mark.django_db

REASON = "Waiting in Slurm: Resources, position 1 in partition gpu."


@pytest.fixture
def waiting(alpha, django_capture_on_commit_callbacks):
    """Placed on the Slurm host, started, then kept waiting by Slurm."""
    host = make_host("hpc", cpus=64)
    notebook = make_queued_notebook(alpha, "on-slurm", cpu=1)
    with django_capture_on_commit_callbacks(execute=False):
        place_queued()
    notebook = fresh(notebook)
    assert notebook.state == State.STARTING and notebook.host == host
    services.wait_on_scheduler(notebook, REASON)
    billing.restart_interval(notebook, None)
    return fresh(notebook)


def test_the_placer_leaves_a_notebook_its_hosts_scheduler_keeps_waiting(
    waiting, django_capture_on_commit_callbacks
):
    assert (waiting.state, waiting.info_code) == (State.QUEUED, InfoCode.WAITING_FOR_CAPACITY)
    assert waiting.info_message == REASON
    secret = waiting.editor_secret
    with django_capture_on_commit_callbacks(execute=False) as sent:
        assert place_queued() == []
    assert sent == []
    assert fresh(waiting).editor_secret == secret  # the job's run is still its run
    assert not BillableInterval.objects.filter(notebook=waiting).exists()


def test_when_the_scheduler_runs_it_the_start_goes_on_on_the_same_host(
    waiting, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as sent:
        services.scheduler_started(waiting)
    notebook = fresh(waiting)
    assert notebook.state == State.STARTING and notebook.host.name == "hpc"
    assert len(sent) == 1  # its start task, to that host


def test_a_user_stop_while_waiting_gives_the_host_back(waiting):
    services.stop(waiting, actor="alice")
    notebook = fresh(waiting)
    assert notebook.state == State.STOPPED and notebook.host is None
    assert not BillableInterval.objects.filter(notebook=notebook).exists()


def test_billing_follows_the_schedulers_start_and_end(waiting):
    started = timezone.now() - timedelta(minutes=3, seconds=10)
    billing.restart_interval(waiting, started)
    interval = BillableInterval.objects.get(notebook=waiting)
    assert interval.started_at == started
    assert interval.records.count() == 4  # the minutes begun since the job started
    # Started again (a second report of the same start) bills nothing twice.
    billing.restart_interval(waiting, started)
    assert BillableInterval.objects.get(notebook=waiting).records.count() == 4
    ended = started + timedelta(minutes=3, seconds=30)
    billing.close_interval(waiting, at=ended)
    closed = BillableInterval.objects.get(notebook=waiting)
    assert closed.ended_at == ended and closed.records.count() == 4
