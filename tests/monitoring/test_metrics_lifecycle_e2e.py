"""The metrics after a real notebook lifecycle: API -> real worker -> JupyterLab -> stop.

The platform's /metrics (served by uvicorn, scraped over loopback) and the
host worker's own metrics port are read as Prometheus would read them.
"""

import pytest
import requests

from nbcloud.notebooks.models import Notebook
from support.metrics import samples
from support.services import METRICS_TOKEN
from support.waiting import wait_for, wait_state

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SPEC = {
    "name": "watched",
    "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
    "resources": {"cpu": 1},
}
START = "nbcloud_notebook_start_duration_seconds"
SCRAPE = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def platform_metrics(url: str) -> dict:
    reply = requests.get(f"{url}/metrics", headers=SCRAPE, timeout=30)
    assert reply.status_code == 200, reply.text
    return samples(reply.text)


def test_metrics_follow_a_notebook_through_its_lifecycle(
    platform_server,
    monitored_worker,
    worker_metrics_port,
    conda_env,
    this_host,
    alice_api,
    worker_host,
):
    from nbcloud.tasks import billing_tick
    from workers.tasks import start_notebook

    before = platform_metrics(platform_server)
    process_count = (f"{START}_count", (("runtime", "process"),))
    process_sum = (f"{START}_sum", (("runtime", "process"),))
    tick_count = ("nbcloud_billing_tick_duration_seconds_count", ())
    failed_starts = ("nbcloud_task_failures_total", (("task", "notebooks.start"),))

    created = alice_api.post("/api/v1/projects/alpha/notebooks/", SPEC, format="json")
    assert created.status_code == 201, created.content
    notebook_id = created.json()["id"]
    url = f"/api/v1/projects/alpha/notebooks/{notebook_id}/"
    wait_state(alice_api, url, "RUNNING")
    try:
        running = platform_metrics(platform_server)
        assert running[("nbcloud_notebooks", (("region", "GRA"), ("state", "RUNNING")))] >= 1
        assert running[process_count] == before.get(process_count, 0) + 1
        took = running[process_sum] - before.get(process_sum, 0)
        assert 0.5 < took < 120, took  # an editor start, as long as it really took

        # The host's own port: this notebook's readings, labelled.
        def worker_series():
            text = requests.get(
                f"http://127.0.0.1:{worker_metrics_port}/metrics", headers=SCRAPE, timeout=10
            ).text
            mine = {
                name: value
                for (name, labels), value in samples(text).items()
                if ("notebook", notebook_id) in labels
            }
            return mine if "nbcloud_notebook_cpu_usage_cores" in mine else None

        series = wait_for(worker_series, timeout=30, what="the worker's notebook series")
        assert series["nbcloud_notebook_memory_usage_bytes"] > 20 * 2**20  # JupyterLab's RSS
        limit = series["nbcloud_notebook_memory_limit_bytes"]
        assert limit >= series["nbcloud_notebook_memory_usage_bytes"]
        assert series["nbcloud_notebook_cpu_seconds_total"] > 0.1  # its start-up, at least
        assert series["nbcloud_notebook_workspace_bytes"] >= 0
        text = requests.get(
            f"http://127.0.0.1:{worker_metrics_port}/metrics", headers=SCRAPE, timeout=10
        ).text
        assert 'project="alpha"' in text and f'host="{worker_host}"' in text

        # The same readings as JSON, from the API.
        reply = alice_api.get(url + "metrics/")
        assert reply.status_code == 200, reply.content
        body = reply.json()
        assert body["notebook"] == notebook_id
        assert body["samples"] and body["samples"][-1]["memory_limit_bytes"] == limit
        assert all(s["memory_bytes"] > 0 and s["host"] == worker_host for s in body["samples"])
    finally:
        assert alice_api.post(url + "stop/").status_code == 202
        wait_state(alice_api, url, "STOPPED")

    # The control plane's own work is visible too.
    billing_tick.delay()
    start_notebook.delay("not-a-notebook-id", host=worker_host)

    def settled():
        found = platform_metrics(platform_server)
        ticked = found[tick_count] > before.get(tick_count, 0)
        failed = found.get(failed_starts, 0) > before.get(failed_starts, 0)
        return found if ticked and failed else None

    after = wait_for(settled, timeout=60, what="the tick and the failure to be counted")
    assert after[("nbcloud_notebooks", (("region", "GRA"), ("state", "STOPPED")))] >= 1
    assert after[failed_starts] == before.get(failed_starts, 0) + 1
    assert after[("nbcloud_billing_tick_duration_seconds_sum", ())] >= before.get(
        ("nbcloud_billing_tick_duration_seconds_sum", ()), 0
    )
    # Stopped, it is no longer sampled: its series leave the worker's exposition.
    wait_for(
        lambda: (
            notebook_id
            not in requests.get(
                f"http://127.0.0.1:{worker_metrics_port}/metrics", headers=SCRAPE, timeout=10
            ).text
        ),
        timeout=30,
        what="the stopped notebook's series to go",
    )
    assert Notebook.objects.get(pk=notebook_id).samples.exists()  # its last hour is kept
