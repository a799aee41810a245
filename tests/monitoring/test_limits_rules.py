"""Idle and runtime limits, decided from the database: when to warn, stop or restart."""

from datetime import timedelta

import pytest
from django.utils import timezone

from nbcloud import dispatch
from nbcloud.hosts.models import Host
from nbcloud.monitoring import limits
from nbcloud.monitoring.models import NotebookSample
from support.factories import make_notebook
from workers import idle

pytestmark = pytest.mark.django_db


@pytest.fixture
def host(db):
    return Host.objects.create(name="h1", region="GRA", cpus=8, memory_bytes=1, disk_bytes=1)


@pytest.fixture
def running(alpha, host):
    def make(started_minutes_ago=30, **fields):
        started = timezone.now() - timedelta(minutes=started_minutes_ago)
        return make_notebook(alpha, state="RUNNING", host=host, last_started_at=started, **fields)

    return make


def codes(notebook) -> list[str]:
    return list(notebook.events.values_list("code", flat=True))


def test_recent_activity_keeps_it_running(running, settings):
    notebook = running(idle_timeout=600)
    now = timezone.now()
    limits.apply_idle_timeout(notebook, now - timedelta(seconds=30), 600, now)
    notebook.refresh_from_db()
    assert notebook.state == "RUNNING" and codes(notebook) == []
    assert notebook.last_activity_at == now - timedelta(seconds=30)


def test_a_warning_comes_once_before_the_stop(running, settings):
    settings.NBCLOUD_IDLE_WARNING = 120
    notebook = running(idle_timeout=600)
    now = timezone.now()
    seen = now - timedelta(seconds=500)  # stops in 100 s: inside the warning's 120 s
    limits.apply_idle_timeout(notebook, seen, 600, now)
    limits.apply_idle_timeout(notebook, None, 600, now + timedelta(seconds=10))
    notebook.refresh_from_db()
    assert notebook.state == "RUNNING"
    assert codes(notebook) == ["IDLE_WARNING"]
    assert notebook.info_code == "IDLE_WARNING" and "keepalive" in notebook.info_message


def test_idle_past_the_timeout_stops_and_says_why(
    running, django_capture_on_commit_callbacks, broker_url
):
    notebook = running(idle_timeout=600)
    now = timezone.now()
    with django_capture_on_commit_callbacks() as sent:
        limits.apply_idle_timeout(notebook, now - timedelta(seconds=601), 600, now)
    notebook.refresh_from_db()
    assert notebook.state == "STOPPING"
    stop = notebook.events.get(to_state="STOPPING")
    assert (
        stop.code == "IDLE_TIMEOUT" and "Idle for 10 min 1 s (idle_timeout 10 min)" in stop.message
    )
    assert len(sent) == 1  # the host's stop task, which saves the workspace


def test_no_activity_at_all_counts_from_the_start(running):
    notebook = running(started_minutes_ago=2)
    now = timezone.now()
    limits.apply_idle_timeout(notebook, None, 600, now)
    notebook.refresh_from_db()
    assert notebook.state == "RUNNING"


def test_busy_gpus_or_cpus_are_activity(running, settings):
    settings.NBCLOUD_IDLE_GPU_PERCENT = 5
    settings.NBCLOUD_IDLE_CPU_CORES = 0.2
    notebook = running()
    now = timezone.now()

    def sample(seconds_ago, cpu=0.01, gpu=0):
        return NotebookSample.objects.create(
            notebook=notebook,
            host="h1",
            at=now - timedelta(seconds=seconds_ago),
            cpu_cores=cpu,
            gpus=[{"uuid": "GPU-1", "utilization_percent": gpu}],
        )

    sample(20)
    assert limits.resource_activity(notebook, now) is None  # JupyterLab idling
    gpu = sample(15, gpu=60)
    assert limits.resource_activity(notebook, now) == gpu.at
    cpu = sample(10, cpu=1.0)
    assert limits.resource_activity(notebook, now) == cpu.at


def test_max_runtime_stops(running, django_capture_on_commit_callbacks, broker_url):
    notebook = running(started_minutes_ago=61, max_runtime=3600)
    with django_capture_on_commit_callbacks(execute=False) as sent:
        limits.check_limits()
    notebook.refresh_from_db()
    assert notebook.state == "STOPPING"
    assert notebook.events.get(to_state="STOPPING").code == "MAX_RUNTIME"
    assert len(sent) == 1


def test_max_runtime_with_auto_restart_restarts(running, django_capture_on_commit_callbacks):
    notebook = running(started_minutes_ago=61, max_runtime=3600, timeout_auto_restart=True)
    with django_capture_on_commit_callbacks(execute=False) as sent:
        limits.check_limits()
    notebook.refresh_from_db()
    assert notebook.state == "RESTARTING" and notebook.host_id  # capacity kept
    assert notebook.events.get(to_state="RESTARTING").code == "TIMEOUT_RESTART"
    assert len(sent) == 1


def test_project_defaults_apply(running, alpha, django_capture_on_commit_callbacks):
    alpha.default_max_runtime = 3600
    alpha.save()
    own = running(started_minutes_ago=61, max_runtime=7200)
    inherited = running(started_minutes_ago=61)
    with django_capture_on_commit_callbacks(execute=False):
        limits.check_limits()
    own.refresh_from_db()
    inherited.refresh_from_db()
    assert own.state == "RUNNING" and inherited.state == "STOPPING"


def test_only_hosts_with_idle_limits_are_asked(running, monkeypatch):
    sent = []
    monkeypatch.setattr(dispatch, "send_all", lambda tasks: sent.extend(t.kwargs for t in tasks))
    running()
    limits.check_limits()
    assert sent == []
    running(idle_timeout=3600)
    limits.check_limits()
    assert sent == [{"host": "h1"}]


@pytest.mark.e2e
def test_code_server_counts_a_client_not_the_probe(
    transactional_db, broker_url, this_host, conda_env, code_server, alpha
):
    """VS Code's own heartbeat: the idle probe (GET /healthz) must not look like use."""
    import requests

    from workers import lifecycle, workspace
    from workers.runtimes.editors import code_server_session

    notebook = make_notebook(
        alpha, state="STARTING", host=this_host, editor_id="vscode", editor_secret="v" * 48
    )
    lifecycle.start(str(notebook.pk), this_host.name)
    notebook.refresh_from_db()
    assert notebook.state == "RUNNING", notebook.info_message
    try:
        now = timezone.now()
        for _ in range(3):
            assert idle.editor_activity(notebook, now) is None  # started, never used
        endpoint = lifecycle.runtime_for(notebook).endpoint
        cookie = {"code-server-session": code_server_session(notebook.editor_secret)}
        assert requests.get(endpoint.url, cookies=cookie, timeout=30).status_code == 200
        assert idle.editor_activity(notebook, timezone.now()) >= now  # a client was there
    finally:
        lifecycle.runtime_for(notebook).stop(5)
        workspace.remove_local(notebook)
