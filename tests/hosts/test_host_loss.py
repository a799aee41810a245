"""Heartbeats and lost hosts: a silent host is marked LOST, its notebooks start
again on another host of the region or wait in line, and their billing stops
at the host's last heartbeat. Rows only; the start tasks are not sent."""

from datetime import timedelta

import pytest
from django.utils import timezone

from nbcloud.billing.models import BillableInterval, UsageRecord
from nbcloud.billing.services import tick
from nbcloud.hosts import services
from nbcloud.hosts.models import Host, HostState
from nbcloud.notebooks import reconcile
from nbcloud.notebooks.states import InfoCode, State
from support.factories import fresh, make_host, make_queued_notebook

pytestmark = pytest.mark.django_db


def silent_for(host: Host, seconds: float) -> Host:
    Host.objects.filter(pk=host.pk).update(
        last_heartbeat_at=timezone.now() - timedelta(seconds=seconds)
    )
    host.refresh_from_db()
    return host


def placed(notebook):
    """Place one queued notebook (as the scheduler does) and return it fresh."""
    services.place_queued()
    notebook = fresh(notebook)
    assert notebook.state == State.STARTING
    return notebook


def test_a_heartbeat_refreshes_the_host_and_brings_a_lost_one_back(alpha):
    host = silent_for(make_host("h1", state=HostState.LOST), 600)
    before = host.last_heartbeat_at
    assert services.heartbeat("h1").state == HostState.READY
    assert fresh(host).last_heartbeat_at > before
    assert services.heartbeat("nowhere") is None


def test_only_hosts_silent_longer_than_the_limit_are_lost(alpha, settings):
    settings.NBCLOUD_HOST_LOST_AFTER = 60
    silent_for(make_host("quiet"), 61)
    silent_for(make_host("late-but-alive"), 50)
    silent_for(make_host("draining", state=HostState.DRAINING), 120)
    reconcile.run()
    states = dict(Host.objects.values_list("name", "state"))
    assert states == {
        "quiet": HostState.LOST,
        "late-but-alive": HostState.READY,
        "draining": HostState.LOST,
    }
    # Lost once: reconcile does not lose it again.
    assert services.mark_lost(timezone.now()) == ["late-but-alive"]


def test_a_lost_hosts_notebook_starts_on_another_host_of_its_region(alpha, settings):
    settings.NBCLOUD_HOST_LOST_AFTER = 60
    doomed = make_host("a-doomed", gpus=2, cpus=26, memory_gib=80)
    notebook = placed(make_queued_notebook(alpha, "nb", gpu=1))
    assert notebook.host == doomed
    make_host("other-region", region="BHS", gpus=2, cpus=26, memory_gib=80)
    spare = make_host("z-spare", gpus=2, cpus=26, memory_gib=80)
    old_secret = notebook.editor_secret
    # It has run for ten minutes, and its host went silent 90 s ago.
    BillableInterval.objects.filter(notebook=notebook).update(
        started_at=timezone.now() - timedelta(minutes=10)
    )
    doomed = silent_for(doomed, 90)

    reconcile.run()

    notebook = fresh(notebook)
    assert notebook.state == State.STARTING
    assert notebook.host == spare and notebook.gpu_uuids == [spare.gpu_uuids[0]]
    assert notebook.editor_secret != old_secret
    assert notebook.last_stopped_at == doomed.last_heartbeat_at
    moves = list(notebook.events.values_list("from_state", "to_state", "code"))
    assert moves[-2:] == [
        (State.STARTING, State.RESTARTING, InfoCode.HOST_LOST),
        (State.RESTARTING, State.STARTING, InfoCode.PLACED),
    ]
    lost = notebook.events.get(code=InfoCode.HOST_LOST)
    assert "Host a-doomed stopped answering" in lost.message
    assert "from the last backup" in lost.message

    # Billing: the first interval ends at the lost host's last heartbeat;
    # a new one opens with the new placement.
    first, second = BillableInterval.objects.filter(notebook=notebook).order_by("started_at")
    assert first.ended_at == doomed.last_heartbeat_at
    assert first.records.count() == 9  # 8.5 minutes: 9 commenced, not 10
    assert second.ended_at is None and second.started_at > doomed.last_heartbeat_at


def test_billing_of_a_start_after_the_last_heartbeat_bills_nothing(alpha):
    host = silent_for(make_host("h"), 90)
    notebook = placed(make_queued_notebook(alpha, "nb", cpu=1))
    services.mark_lost(timezone.now() - timedelta(seconds=60))
    interval = BillableInterval.objects.get(notebook=notebook)
    assert interval.ended_at == interval.started_at > host.last_heartbeat_at
    assert not interval.records.exists()


def test_without_room_it_waits_first_in_line_and_positions_follow(alpha, settings):
    settings.NBCLOUD_HOST_LOST_AFTER = 60
    doomed = make_host("doomed", cpus=1, memory_gib=8)
    running = placed(make_queued_notebook(alpha, "running", cpu=1))
    assert running.host == doomed
    later = make_queued_notebook(alpha, "later", cpu=1)
    services.place_queued()
    assert "position 1 in region GRA" in fresh(later).info_message

    silent_for(doomed, 90)
    reconcile.run()

    running, later = fresh(running), fresh(later)
    assert running.state == State.QUEUED and running.host is None
    # It was in line before `later` (queued earlier), so it goes first.
    assert "position 1 in region GRA" in running.info_message
    assert "position 2 in region GRA" in later.info_message
    assert list(running.events.values_list("to_state", "code"))[-2:] == [
        (State.RESTARTING, InfoCode.HOST_LOST),
        (State.QUEUED, InfoCode.WAITING_FOR_CAPACITY),
    ]

    # The host comes back: the first in line starts there, the other moves up.
    services.heartbeat("doomed")
    services.place_queued()
    running, later = fresh(running), fresh(later)
    assert running.state == State.STARTING and running.host == doomed
    assert "position 1 in region GRA" in later.info_message


def test_a_stop_or_delete_under_way_on_a_lost_host_ends(alpha):
    doomed = make_host("doomed")
    stopping = placed(make_queued_notebook(alpha, "stopping", cpu=1))
    deleting = placed(make_queued_notebook(alpha, "deleting", cpu=1))
    for notebook, state in ((stopping, State.STOPPING), (deleting, State.DELETING)):
        type(notebook).objects.filter(pk=notebook.pk).update(state=state)
    silent_for(doomed, 90)
    assert services.mark_lost(timezone.now() - timedelta(seconds=60)) == ["doomed"]
    stopping, deleting = fresh(stopping), fresh(deleting)
    assert (stopping.state, stopping.info_code) == (State.FAILED, InfoCode.HOST_LOST)
    assert "the last backup is kept" in stopping.info_message
    assert deleting.state == State.DELETED
    assert stopping.host is None and deleting.host is None
    assert not BillableInterval.objects.filter(ended_at__isnull=True).exists()


def test_a_host_that_heart_beats_is_not_lost(alpha):
    host = silent_for(make_host("h"), 90)
    services.heartbeat("h")
    assert services.mark_lost(timezone.now() - timedelta(seconds=60)) == []
    assert fresh(host).state == HostState.READY


def test_a_notebook_restarting_on_a_lost_host_waits_in_line_again(alpha):
    doomed = make_host("doomed", cpus=1, memory_gib=8)
    notebook = placed(make_queued_notebook(alpha, "nb", cpu=1))
    type(notebook).objects.filter(pk=notebook.pk).update(state=State.RESTARTING)
    silent_for(doomed, 90)
    reconcile.run()
    notebook = fresh(notebook)
    assert (notebook.state, notebook.host) == (State.QUEUED, None)
    assert notebook.events.filter(
        from_state=State.RESTARTING, to_state=State.QUEUED, code=InfoCode.HOST_LOST
    ).exists()
    assert "position 1 in region GRA" in notebook.info_message


def test_a_notebook_placed_on_a_host_already_silent_is_billed_nothing(alpha, settings):
    settings.NBCLOUD_HOST_LOST_AFTER = 60
    host = silent_for(make_host("dying", gpus=1, cpus=13, memory_gib=40), 120)
    notebook = placed(make_queued_notebook(alpha, "late", gpu=1))  # still READY: placed
    tick(timezone.now() + timedelta(seconds=90))  # its first two minutes billed
    assert UsageRecord.objects.filter(notebook_id=notebook.pk).count() == 2
    services.mark_lost(timezone.now() - timedelta(seconds=60))
    interval = BillableInterval.objects.get(notebook=notebook)
    assert interval.ended_at == interval.started_at  # it never ran after the host's last word
    assert not UsageRecord.objects.filter(notebook_id=notebook.pk).exists()
    assert fresh(host).state == HostState.LOST
