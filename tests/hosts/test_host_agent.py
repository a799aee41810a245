"""A host's worker: `celery worker --host-name N --region R` registers the host,
heart-beats, brings a LOST host back, and stops editors of runs it no longer
holds. Real worker processes on the real broker; the stale editor is a real
process."""

import json
import subprocess
from datetime import timedelta

import psutil
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from nbcloud.hosts import services
from nbcloud.hosts.models import Host, HostState
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import State
from support.factories import fresh, make_host, make_notebook, make_queued_notebook
from support.paths import ROOT
from support.services import CELERY, host_worker, service_env, stop_service
from support.waiting import wait_for
from workers import ledger, workspace
from workers.host_agent import HostAgent, HostIdentity, identify, sweep_stale_editors


@pytest.mark.django_db(transaction=True)
def test_a_worker_with_host_options_registers_and_heart_beats(broker_url, public_url):
    proc = host_worker(
        broker_url,
        public_url,
        "agent-1",
        "--region",
        "BHS",
        "--host-labels",
        "rack=r1,ib=true",
        NBCLOUD_HEARTBEAT_INTERVAL="1",
        NBCLOUD_HOST_CPUS="3",
    )
    try:
        host = Host.objects.get(name="agent-1")
        assert (host.region, host.state, host.cpus) == ("BHS", HostState.READY, 3)
        assert host.labels == {"rack": "r1", "ib": "true"} and host.gpus == []
        banner = (settings.DATA_DIR / "worker-agent-1.log").read_text()
        assert ".> host.agent-1 " in banner and ".> celery " not in banner

        first = host.last_heartbeat_at
        wait_for(lambda: fresh(host).last_heartbeat_at > first, timeout=10, what="a heartbeat")

        # Marked lost (say, after a network cut): its next heartbeat brings it back.
        Host.objects.filter(pk=host.pk).update(state=HostState.LOST)
        wait_for(lambda: fresh(host).state == HostState.READY, timeout=10, what="READY again")
    finally:
        stop_service(proc)


@pytest.mark.django_db(transaction=True)
def test_each_heartbeat_asks_the_host_to_check_its_own_editors(broker_url, alpha):
    """Reconcile no longer asks every host to check its editors each round (its cost
    grew with the fleet): each host asks itself, on its own queue, as it heart-beats."""
    from nbcloud.monitoring import fleet
    from nbcloud.notebooks import reconcile

    host = make_host("beat-1", region="BHS")
    registered = host.last_heartbeat_at
    make_notebook(alpha, state=State.RUNNING, host=host, region="BHS")
    broker = fleet.broker_redis()
    broker.delete("host.beat-1")  # no worker consumes this host's queue
    try:
        agent = HostAgent(HostIdentity("beat-1", "BHS"), interval=60)
        agent.beat()
        reconcile.run()  # sends nothing to the host
        agent.beat()
        sent = [json.loads(raw) for raw in broker.lrange("host.beat-1", 0, -1)]
        assert [m["headers"]["task"] for m in sent] == ["hosts.check_notebooks"] * 2
        assert all(m["headers"]["expires"] for m in sent)  # a late check is dropped
        assert fresh(host).last_heartbeat_at > registered
    finally:
        broker.delete("host.beat-1")


def test_a_region_outside_the_catalogue_stops_the_worker_with_the_fix(broker_url, public_url):
    argv = [CELERY, "-A", "workers", "worker", "--host-name", "x", "--region", "MARS"]
    env = service_env(broker_url, "x", public_url)
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "region 'MARS' is not in the catalogue; use one of BHS, GRA" in done.stderr


@pytest.fixture
def here(settings, tmp_path):
    """This host's data (its editor records, workspaces) in a folder of the test's own."""
    settings.DATA_DIR = tmp_path
    settings.NBCLOUD_WORKSPACES_DIR = tmp_path / "workspaces"


@pytest.fixture
def stale_editor():
    """A real process standing for an editor a lost run left behind."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def started_here(notebook, proc) -> None:
    state = {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(), "port": 1}
    ledger.record("me", notebook, state)


@pytest.mark.django_db
def test_editors_of_runs_moved_away_are_stopped_and_their_workspace_set_aside(
    alpha, stale_editor, here
):
    me, other = make_host("me"), make_host("other")
    notebook = make_queued_notebook(alpha, "moved", cpu=1, state=State.RUNNING, host=me)
    started_here(notebook, stale_editor)
    local = workspace.local_path(notebook)
    local.mkdir(parents=True)
    (local / "unsaved.txt").write_text("since the last backup")

    # The host was lost; the notebook was placed on another host meanwhile.
    Host.objects.filter(pk=me.pk).update(last_heartbeat_at=timezone.now() - timedelta(minutes=5))
    assert services.mark_lost(timezone.now() - timedelta(minutes=1)) == ["me"]
    services.place_queued()
    assert fresh(notebook).host == other

    assert sweep_stale_editors("me") == [str(notebook.pk)]
    assert stale_editor.wait(5) is not None
    assert not local.exists()
    (aside,) = (local.parent / ".lost").iterdir()
    assert (aside / "unsaved.txt").read_text() == "since the last backup"
    assert ledger.entries("me") == []
    assert sweep_stale_editors("me") == []


@pytest.mark.django_db
def test_the_current_run_is_left_alone_and_a_plain_stop_keeps_the_workspace(
    alpha, stale_editor, here
):
    me = make_host("me")
    notebook = make_queued_notebook(alpha, "mine", cpu=1, state=State.RUNNING, host=me)
    started_here(notebook, stale_editor)
    assert sweep_stale_editors("me") == []
    assert stale_editor.poll() is None and len(ledger.entries("me")) == 1

    # Stopped without a lost host (here its editor is found still up): the
    # editor goes, a workspace kept for a failed backup stays where it is.
    local = workspace.local_path(notebook)
    local.mkdir(parents=True)
    Notebook.objects.filter(pk=notebook.pk).update(state=State.FAILED, host=None)
    assert sweep_stale_editors("me") == [str(notebook.pk)]
    assert stale_editor.wait(5) is not None
    assert local.exists()


def test_without_host_options_a_worker_serves_the_host_its_queues_name(settings):
    settings.NBCLOUD_HOST_NAME, settings.NBCLOUD_HOST_REGION = "gpu-9", "BHS"
    settings.NBCLOUD_HOST_LABELS = "rack=r9"
    assert identify({"control", "billing"}, None, None, None) is None
    assert identify({"control", "host.gpu-9"}, None, None, None) == HostIdentity(
        "gpu-9", "BHS", {"rack": "r9"}
    )
    # The options win over the settings, and need no -Q.
    assert identify(set(), "gpu-1", "GRA", "ib=true") == HostIdentity(
        "gpu-1", "GRA", {"ib": "true"}
    )
    with pytest.raises(ImproperlyConfigured, match="--host-labels='ib'"):
        identify(set(), "gpu-1", "GRA", "ib")


@pytest.mark.django_db(transaction=True)
def test_a_check_still_under_way_makes_the_next_one_a_no_op(monkeypatch):
    """Checks are asked at every heartbeat; a slow one (a scheduler slow to answer, a
    dead editor's workspace being saved) must not be joined by a second pool process
    checking the same host."""
    import threading

    from django.db import connection

    from workers import lifecycle, tasks

    checked, release = [], threading.Event()

    def slow_check(host):
        checked.append(host)
        if threading.current_thread() is not threading.main_thread():
            release.wait(30)  # the first check, still under way

    monkeypatch.setattr(lifecycle, "check_host", slow_check)

    def first():  # as another pool process would
        try:
            tasks.check_notebooks(host="busy-1")
        finally:
            connection.close()

    thread = threading.Thread(target=first)
    thread.start()
    try:
        wait_for(lambda: checked == ["busy-1"], timeout=10, what="the first check to begin")
        tasks.check_notebooks(host="busy-1")  # the next heartbeat's, meanwhile
        tasks.check_notebooks(host="other-1")  # another host's is not held up
        assert checked == ["busy-1", "other-1"]
    finally:
        release.set()
        thread.join(30)
    tasks.check_notebooks(host="busy-1")  # once it is done, the next one checks
    assert checked == ["busy-1", "other-1", "busy-1"]
