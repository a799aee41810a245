"""Three hosts, each a real `celery worker --host-name` process on this machine
with a workspace folder of its own: placement across them, a queue when they
are full, and a host killed with SIGKILL whose notebook starts again on
another host from its last backup, while the others keep their place in line.
"""

from datetime import timedelta

import psutil
import pytest
import requests
from django.conf import settings

from nbcloud.hosts.models import Host, HostState
from nbcloud.notebooks import reconcile
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import InfoCode, State
from support.services import host_worker, kill_worker, stop_service
from support.waiting import wait_for, wait_row_state

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

HOSTS = ("mh-1", "mh-2", "mh-3")
NOTEBOOKS = "/api/v1/projects/alpha/notebooks/"
SPEC = {
    "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
    "resources": {"cpu": 1},
    "region": "BHS",  # served by these three hosts alone here
}


class Hosts(dict):
    """Host workers by name, of one vCPU each, heart-beating every second."""

    def __init__(self, broker_url: str, public_url: str):
        super().__init__()
        self.urls = broker_url, public_url

    def start(self, name: str) -> None:
        self[name] = host_worker(
            *self.urls,
            name,
            "--region",
            "BHS",
            NBCLOUD_HOST_CPUS="1",
            NBCLOUD_HEARTBEAT_INTERVAL="1",
            NBCLOUD_WORKSPACES_DIR=str(settings.DATA_DIR / f"workspaces-{name}"),
        )


@pytest.fixture
def hosts(broker_url, public_url):
    started = Hosts(broker_url, public_url)
    yield started
    for proc in started.values():
        if proc.poll() is None:
            stop_service(proc)


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def get(pk) -> Notebook:
    return Notebook.objects.select_related("host").get(pk=pk)


def create(api, name: str) -> str:
    reply = api.post(NOTEBOOKS, {**SPEC, "name": name}, format="json")
    assert reply.status_code == 201, reply.content
    return reply.json()["id"]


def act(api, pk, action: str) -> None:
    assert api.post(f"{NOTEBOOKS}{pk}/{action}/").status_code == 202


def test_three_hosts_place_queue_and_survive_a_lost_host(
    platform_server, celery_worker_process, conda_env, hosts, alice_api, alice, settings
):
    for name in HOSTS:
        hosts.start(name)
    assert set(Host.objects.filter(region="BHS").values_list("name", "cpus")) == {
        (name, 1) for name in HOSTS
    }
    auth = {"Authorization": f"Bearer {alice[1]}"}

    # A notebook with a backup: a file written in it, then stopped and started.
    a = create(alice_api, "a")
    url = wait_row_state(a, State.RUNNING).url
    put = requests.put(
        f"{url}api/contents/kept.txt",
        json={"type": "file", "format": "text", "content": "from the last backup"},
        headers=auth,
        timeout=30,
    )
    assert put.status_code in (200, 201), put.text
    act(alice_api, a, "stop")
    wait_row_state(a, State.STOPPED)
    act(alice_api, a, "start")
    first = wait_row_state(a, State.RUNNING)

    # Two more fill the other hosts, one per host; a fourth waits in line.
    b, c = create(alice_api, "b"), create(alice_api, "c")
    placed = {first.host.name, wait_row_state(b, State.RUNNING).host.name}
    placed.add(wait_row_state(c, State.RUNNING).host.name)
    assert placed == set(HOSTS)
    d = create(alice_api, "d")
    wait_for(lambda: "position 1 in region BHS" in get(d).info_message, what="d in line")

    # a's host dies: its worker is killed and heart-beats no more. Reconcile runs at
    # a time NBCLOUD_HOST_LOST_AFTER past its last heartbeat, without waiting that
    # long, once the living hosts (every second) have heart-beaten since.
    lost_host, old_editor = first.host.name, first.runtime_state["pid"]
    kill_worker(hosts[lost_host])
    silent_since = Host.objects.get(name=lost_host).last_heartbeat_at + timedelta(seconds=1)
    wait_for(
        lambda: (
            not Host.objects.filter(state=HostState.READY, last_heartbeat_at__lt=silent_since)
            .exclude(name=lost_host)
            .exists()
        ),
        timeout=30,
        what="the living hosts' next heartbeats",
    )
    reconcile.run(now=silent_since + timedelta(seconds=settings.NBCLOUD_HOST_LOST_AFTER))
    assert Host.objects.get(name=lost_host).state == HostState.LOST

    # No host has room: a waits first in line (it was queued before d).
    a_now = get(a)
    assert a_now.state == State.QUEUED
    assert "position 1 in region BHS" in a_now.info_message
    assert "position 2 in region BHS" in get(d).info_message
    assert a_now.events.filter(code=InfoCode.HOST_LOST, to_state=State.RESTARTING).exists()

    # b stops: a takes its host, restores its last backup, and runs again.
    b_host = get(b).host.name
    act(alice_api, b, "stop")
    moved = wait_row_state(a, State.RUNNING)
    assert moved.host.name == b_host
    kept = requests.get(f"{moved.url}api/contents/kept.txt", headers=auth, timeout=30)
    assert kept.status_code == 200 and kept.json()["content"] == "from the last backup"
    wait_for(lambda: "position 1 in region BHS" in get(d).info_message, what="d moved up")

    # The lost host comes back: its old editor of a is stopped (a runs
    # elsewhere), and d, first in line, starts there.
    assert running(old_editor)
    hosts.start(lost_host)
    assert Host.objects.get(name=lost_host).state == HostState.READY
    wait_for(lambda: not running(old_editor), timeout=30, what="the old editor stopped")
    aside = settings.DATA_DIR / f"workspaces-{lost_host}" / ".lost"
    assert any(p.name.startswith(a) for p in aside.iterdir())
    assert wait_row_state(d, State.RUNNING).host.name == lost_host
    assert get(a).state == State.RUNNING and get(a).host.name == b_host

    for pk in (a, c, d):
        act(alice_api, pk, "stop")
    for pk in (a, c, d):
        wait_row_state(pk, State.STOPPED)


def test_logs_come_from_each_notebooks_own_host(
    platform_server, celery_worker_process, conda_env, hosts, alice_api
):
    """The web process reads no host's files: two hosts with data directories of
    their own each ship their editor's log, and the API serves both, during the
    run and after the stop."""
    from django.conf import settings as live

    for name in HOSTS[:2]:
        data = live.DATA_DIR / f"data-{name}"
        hosts[name] = host_worker(
            *hosts.urls,
            name,
            "--region",
            "BHS",
            NBCLOUD_HOST_CPUS="1",
            NBCLOUD_HEARTBEAT_INTERVAL="1",
            NBCLOUD_DATA_DIR=str(data),
            NBCLOUD_WORKSPACES_DIR=str(data / "workspaces"),
            SECRET_KEY=live.SECRET_KEY,
        )
    first, second = create(alice_api, "log-a"), create(alice_api, "log-b")
    on = {pk: wait_row_state(pk, State.RUNNING).host.name for pk in (first, second)}
    assert set(on.values()) == set(HOSTS[:2])

    for pk, host in on.items():
        # Each editor's log lives on its own host only...
        assert (live.DATA_DIR / f"data-{host}" / "logs" / f"{pk}.log").exists()
        assert not (live.DATA_DIR / "logs" / f"{pk}.log").exists()
        # ...and the API, in a process of its own, serves it: the editor's start-up
        # lines, which name the notebook's base URL.
        reply = alice_api.get(f"{NOTEBOOKS}{pk}/logs/", {"tail": "500"})
        assert reply.status_code == 200, reply.content
        assert f"/notebooks/{pk}/" in reply.json()["logs"], reply.json()
        assert reply.json()["updated_at"]

    for pk in on:
        act(alice_api, pk, "stop")
    for pk in on:
        wait_row_state(pk, State.STOPPED)
        assert f"/notebooks/{pk}/" in alice_api.get(f"{NOTEBOOKS}{pk}/logs/").json()["logs"]
