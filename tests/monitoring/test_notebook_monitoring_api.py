"""The notebook API's monitoring parts: samples as JSON, limits in the spec, keepalive."""

from datetime import timedelta

import pytest
from django.utils import timezone

from nbcloud.monitoring.models import NotebookSample
from support.factories import make_notebook

pytestmark = pytest.mark.django_db
SPEC = {"name": "n", "env": {"framework_id": "conda", "editor_id": "jupyterlab"}}


def url(notebook, action="") -> str:
    return f"/api/v1/projects/{notebook.project.name}/notebooks/{notebook.pk}/{action}"


@pytest.fixture
def sampled(alpha):
    notebook = make_notebook(alpha, state="RUNNING")
    now = timezone.now()
    for minutes_ago in (70, 30, 5, 1):
        NotebookSample.objects.create(
            notebook=notebook,
            host="h1",
            at=now - timedelta(minutes=minutes_ago),
            cpu_cores=minutes_ago / 10,
            memory_bytes=minutes_ago * 2**20,
            gpus=[{"uuid": "GPU-1", "utilization_percent": minutes_ago}],
        )
    return notebook


def test_samples_of_the_last_hour_by_default(alice_api, sampled):
    reply = alice_api.get(url(sampled, "metrics/"))
    assert reply.status_code == 200, reply.content
    body = reply.json()
    assert [s["cpu_cores"] for s in body["samples"]] == [3.0, 0.5, 0.1]  # oldest first
    assert body["samples"][0]["gpus"] == [{"uuid": "GPU-1", "utilization_percent": 30}]
    assert body["retention"] == 3600


@pytest.mark.parametrize("since", ["600", "SINCE_ISO"])
def test_since_narrows_the_samples(alice_api, sampled, since):
    if since == "SINCE_ISO":
        since = (timezone.now() - timedelta(minutes=10)).isoformat()  # +00:00 in a URL
    reply = alice_api.get(url(sampled, "metrics/"), {"since": since})
    assert [s["cpu_cores"] for s in reply.json()["samples"]] == [0.5, 0.1]


@pytest.mark.parametrize("since", ["yesterday", "2026-13-45T00:00:00", "9" * 30])
def test_a_bad_since_says_what_is_expected(alice_api, sampled, since):
    reply = alice_api.get(url(sampled, "metrics/"), {"since": since})
    assert reply.status_code == 400
    assert "ISO 8601" in reply.json()["fields"]["since"][0]


def test_samples_are_for_the_project_only(bob_api, charlie_api, sampled):
    assert bob_api.get(url(sampled, "metrics/")).status_code == 200  # read role reads
    assert charlie_api.get(url(sampled, "metrics/")).status_code == 404


def test_monitoring_url_needs_grafana(alice_api, sampled, settings):
    settings.NBCLOUD_GRAFANA_URL = ""
    assert alice_api.get(url(sampled)).json()["status"]["monitoring_url"] is None
    settings.NBCLOUD_GRAFANA_URL = "https://grafana.example.com"
    assert alice_api.get(url(sampled)).json()["status"]["monitoring_url"] == (
        f"https://grafana.example.com/d/nbcloud-notebook/notebook?var-notebook={sampled.pk}"
    )


def test_limits_are_part_of_the_spec(alice_api, alpha, broker_url):
    created = alice_api.post(
        "/api/v1/projects/alpha/notebooks/",
        {**SPEC, "idle_timeout": 3600, "max_runtime": 7 * 86400, "timeout_auto_restart": True},
        format="json",
    )
    assert created.status_code == 201, created.content
    spec = created.json()["spec"]
    assert (spec["idle_timeout"], spec["max_runtime"]) == (3600, 604800)
    default = alice_api.post("/api/v1/projects/alpha/notebooks/", SPEC, format="json").json()
    assert default["spec"]["idle_timeout"] is None  # the project's default


@pytest.mark.parametrize("value", [0, 59, 10**9, "soon"])
def test_a_bad_limit_is_refused_with_the_range(alice_api, alpha, value):
    reply = alice_api.post(
        "/api/v1/projects/alpha/notebooks/", {**SPEC, "idle_timeout": value}, format="json"
    )
    assert reply.status_code == 400
    assert "seconds from 60" in reply.json()["fields"]["idle_timeout"][0]


def test_limits_change_while_running(alice_api, alpha):
    notebook = make_notebook(alpha, state="RUNNING")
    reply = alice_api.patch(
        url(notebook), {"idle_timeout": 120, "max_runtime": None}, format="json"
    )
    assert reply.status_code == 200, reply.content
    notebook.refresh_from_db()
    assert (notebook.idle_timeout, notebook.max_runtime) == (120, None)


def test_keepalive_counts_as_use(alice_api, alpha):
    notebook = make_notebook(alpha, state="RUNNING", info_code="IDLE_WARNING")
    reply = alice_api.post(url(notebook, "keepalive/"))
    assert reply.status_code == 200, reply.content
    notebook.refresh_from_db()
    assert timezone.now() - notebook.last_activity_at < timedelta(seconds=5)
    assert notebook.info_code == "RUNNING"  # the warning is withdrawn
    assert reply.json()["status"]["last_activity_at"] is not None


def test_keepalive_is_for_running_notebooks_of_operators(alice_api, bob_api, charlie_api, alpha):
    running = make_notebook(alpha, state="RUNNING")
    assert bob_api.post(url(running, "keepalive/")).status_code == 403
    assert charlie_api.post(url(running, "keepalive/")).status_code == 404
    stopped = make_notebook(alpha, state="STOPPED")
    reply = alice_api.post(url(stopped, "keepalive/"))
    assert reply.status_code == 409
    assert "only a RUNNING notebook" in reply.json()["message"]
