"""An upgrade from the last release keeps what its database holds.

The database is migrated back to the schema the release shipped
(tests/fixtures/releases/: each app's last migration then), filled through that
schema's own models as the release would have filled it (people, a project, a
token, a datastore, a host, notebooks in several states with their events, a
billing interval and its minutes), then migrated forward to this version. What
the release wrote must read back whole through today's models and API: the
token still signs in, the sealed secret still opens, the notebooks keep their
states, history and cost, and a stopped one can start again.
"""

import json
import os
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from nbcloud.billing.services import month_start
from nbcloud.projects.models import hash_token
from nbcloud.projects.secrets import seal
from support.factories import api_client

# The migrations drop and make tables: in the suite's own database that would pull
# them from under the platform and workers other tests left running, so the check
# runs in a pytest of its own, on a database of its own.
INNER = os.environ.get("NBCLOUD_UPGRADE_CHECK") == "1"
ROOT = Path(__file__).resolve().parents[2]

RELEASE = json.loads(
    (Path(__file__).parent.parent / "fixtures" / "releases" / "2026-11-26.json").read_text()
)
TOKEN = "nbc_release-token-kept-across-the-upgrade"


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    applied = [target for target in targets if target[1] is not None]
    return MigrationExecutor(connection).loader.project_state(applied).apps


def _fill(apps) -> dict:
    """What a release's platform held, written through the release's models."""
    User = apps.get_model("auth", "User")
    Project = apps.get_model("projects", "Project")
    Membership = apps.get_model("projects", "Membership")
    ApiToken = apps.get_model("projects", "ApiToken")
    Datastore = apps.get_model("projects", "Datastore")
    Host = apps.get_model("hosts", "Host")
    Notebook = apps.get_model("notebooks", "Notebook")
    NotebookEvent = apps.get_model("notebooks", "NotebookEvent")
    Interval = apps.get_model("billing", "BillableInterval")
    UsageRecord = apps.get_model("billing", "UsageRecord")

    # Within this month (what cost_to_date counts), even just after midnight on the 1st.
    now = max(timezone.now(), month_start(timezone.now()) + timedelta(hours=3))
    owner = User.objects.create(username="rel-owner", password="!")
    project = Project.objects.create(name="release", gpu_quota=4)
    Membership.objects.create(project=project, user=owner, role="admin")
    ApiToken.objects.create(
        project=project,
        user=owner,
        name="ci",
        role="operator",
        key_hash=hash_token(TOKEN),
        key_prefix=TOKEN[:12],
    )
    Datastore.objects.create(
        project=project,
        alias="lake",
        type="s3",
        endpoint="http://127.0.0.1:9",
        access_key="AK",
        sealed_secrets=seal({"secret_key": "kept-secret"}),
    )
    host = Host.objects.create(
        name="rel-host",
        region="GRA",
        cpus=16,
        memory_bytes=64 << 30,
        disk_bytes=1 << 40,
    )
    common = dict(
        project=project,
        created_by=owner,
        framework_id="conda",
        framework_version="py311",
        editor_id="jupyterlab",
        flavor="ai1-1-cpu",
        region="GRA",
    )
    stopped = Notebook.objects.create(
        name="was-stopped",
        state="STOPPED",
        last_started_at=now - timedelta(hours=2),
        last_stopped_at=now - timedelta(hours=1),
        workspace_size=1234,
        labels={"team": "vision"},
        **common,
    )
    running = Notebook.objects.create(
        name="was-running",
        state="RUNNING",
        host=host,
        last_started_at=now - timedelta(minutes=3),
        runtime_state={"pid": 1, "port": 8888},
        **common,
    )
    failed = Notebook.objects.create(
        name="was-failed", state="FAILED", info_code="START_FAILED", **common
    )
    for notebook, path in (
        (stopped, ["QUEUED", "STARTING", "RUNNING", "STOPPING", "STOPPED"]),
        (running, ["QUEUED", "STARTING", "RUNNING"]),
        (failed, ["QUEUED", "STARTING", "FAILED"]),
    ):
        for before, after in zip(["", *path], path, strict=False):
            NotebookEvent.objects.create(
                notebook=notebook, actor="system", from_state=before, to_state=after, code="OK"
            )
    interval = Interval.objects.create(
        notebook=stopped,
        project=project,
        flavor="ai1-1-cpu",
        units=1,
        unit_price=Decimal("0.0005"),
        currency="EUR",
        started_at=now - timedelta(hours=2),
        ended_at=now - timedelta(hours=2) + timedelta(minutes=3),
    )
    for minute in range(3):
        UsageRecord.objects.create(
            interval=interval,
            minute=minute,
            project=project,
            notebook=stopped,
            flavor="ai1-1-cpu",
            units=1,
            amount=Decimal("0.0005"),
            currency="EUR",
            starts_at=interval.started_at + timedelta(minutes=minute),
        )
    return {"stopped": str(stopped.pk), "running": str(running.pk), "failed": str(failed.pk)}


def test_an_upgrade_from_the_last_release_in_a_database_of_its_own(tmp_path):
    if INNER:
        pytest.skip("this is the check's own run")
    url = os.environ.get("DATABASE_URL", "")
    env = {**os.environ, "NBCLOUD_UPGRADE_CHECK": "1", "NBCLOUD_DATA_DIR": str(tmp_path)}
    if url.startswith("postgres"):
        env["DATABASE_URL"] = url.rsplit("/", 1)[0] + "/nbcloud_upgrade"  # test_nbcloud_upgrade
    else:
        env["DATABASE_URL"] = f"sqlite:///{tmp_path}/upgrade.sqlite3"
    argv = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider"]
    argv += ["--create-db", "-k", "keeps_everything"]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-4000:] + done.stderr
    assert "error" not in done.stdout.splitlines()[-1], done.stdout[-4000:]


@pytest.mark.skipif(not INNER, reason="runs in a pytest of its own (the test above)")
@pytest.mark.django_db(transaction=True)
def test_a_database_of_the_last_release_migrates_and_keeps_everything():
    from nbcloud.billing.models import UsageRecord
    from nbcloud.notebooks.models import Notebook
    from nbcloud.projects.models import Datastore

    release = [(app, name) for app, name in RELEASE["migrations"].items()]
    try:
        ids = _fill(_migrate(release))
        _migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
    finally:  # whatever happened, leave the test database on today's schema
        _migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    states = dict(Notebook.objects.values_list("name", "state"))
    assert states == {"was-stopped": "STOPPED", "was-running": "RUNNING", "was-failed": "FAILED"}
    stopped = Notebook.objects.get(pk=ids["stopped"])
    assert stopped.labels == {"team": "vision"} and stopped.workspace_size == 1234
    assert list(stopped.events.order_by("pk").values_list("to_state", flat=True)) == [
        "QUEUED", "STARTING", "RUNNING", "STOPPING", "STOPPED"
    ]  # fmt: skip
    # Fields the release did not have get values every notebook needs.
    assert len({nb.sandbox_uid for nb in Notebook.objects.all()}) == 3
    assert Datastore.objects.get(alias="lake").secrets() == {"secret_key": "kept-secret"}
    assert UsageRecord.objects.filter(notebook_id=ids["stopped"]).count() == 3

    api = api_client(TOKEN)
    listed = api.get("/api/v1/projects/release/notebooks/")
    assert listed.status_code == 200, listed.content
    assert {nb["spec"]["name"] for nb in listed.json()["results"]} == set(states)
    detail = api.get(f"/api/v1/projects/release/notebooks/{ids['stopped']}/").json()
    assert detail["status"]["state"] == "STOPPED"
    assert detail["status"]["cost_to_date"] == [{"amount": "0.001500", "currency": "EUR"}]
    started = api.post(f"/api/v1/projects/release/notebooks/{ids['stopped']}/start/")
    assert started.status_code == 202, started.content
    assert Notebook.objects.get(pk=ids["stopped"]).state == "QUEUED"
