"""The hosts admin: capacity and use, heartbeat age, state; drain and undrain."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from nbcloud.hosts.models import Host, HostState
from nbcloud.hosts.services import place_queued
from nbcloud.notebooks.states import State
from support.factories import fresh, make_host, make_queued_notebook

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/hosts/host/"


def act(admin_client, action: str, *hosts: Host):
    reply = admin_client.post(
        CHANGELIST, {"action": action, "_selected_action": [h.pk for h in hosts]}, follow=True
    )
    assert reply.status_code == 200
    return reply.content.decode()


def row_of(html: str, name: str) -> str:
    start = html.index(f">{name}<")
    return html[start : html.index("</tr>", start)]


def test_changelist_shows_capacity_use_heartbeat_and_state(admin_client, alpha):
    gpu = make_host("gpu-a", gpus=4, cpus=52, memory_gib=160)
    make_host("cpu-b", cpus=8, memory_gib=64, state=HostState.LOST)
    Host.objects.filter(name="cpu-b").update(
        last_heartbeat_at=timezone.now() - timedelta(minutes=5)
    )
    make_queued_notebook(alpha, "pair", gpu=2)
    place_queued()
    assert fresh(gpu).notebooks.count() == 1

    html = admin_client.get(CHANGELIST).content.decode()
    gpu_row, cpu_row = row_of(html, "gpu-a"), row_of(html, "cpu-b")
    # Two V100S GPUs of ai1-1-gpu: 13 vCPUs, 40 GiB, 300 GiB each.
    assert "2 / 4 Tesla V100S" in gpu_row
    assert "26 / 52" in gpu_row and "80 / 160" in gpu_row and "600 / 4000" in gpu_row
    assert ">ready<" in gpu_row and re.search(r">\d+ s ago<", gpu_row)
    assert "0 / 8" in cpu_row and ">lost (no heartbeat)<" in cpu_row and "5 min ago" in cpu_row


def test_drain_keeps_running_notebooks_and_takes_no_new_ones(admin_client, alpha):
    host = make_host("h1", cpus=8)
    running = make_queued_notebook(alpha, "running", cpu=1)
    place_queued()
    html = act(admin_client, "drain_hosts", host)
    assert "Draining: h1." in html
    assert fresh(host).state == HostState.DRAINING
    assert fresh(running).state == State.STARTING and fresh(running).host == host

    waiting = make_queued_notebook(alpha, "waiting", cpu=1)
    assert place_queued() == []
    assert "position 1 in region GRA" in fresh(waiting).info_message

    html = act(admin_client, "undrain_hosts", host)
    assert "Ready again: h1." in html
    assert place_queued() == [(str(waiting.pk), "h1")]


def test_actions_leave_hosts_in_other_states_alone(admin_client):
    lost = make_host("lost", state=HostState.LOST)
    ready = make_host("ready")
    html = act(admin_client, "drain_hosts", lost, ready)
    assert "Draining: ready." in html
    assert "Left as they are (not READY): lost." in html
    assert fresh(lost).state == HostState.LOST
    html = act(admin_client, "undrain_hosts", lost)
    assert "Left as they are (not DRAINING): lost." in html
    assert fresh(lost).state == HostState.LOST
