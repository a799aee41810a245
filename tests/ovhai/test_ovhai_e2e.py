"""End to end: OVHcloud's `ovhai` SDK -> nbcloud over HTTP -> a real Celery
worker -> a sandboxed JupyterLab, and back, as a script written for OVHcloud
AI Notebooks would drive it."""

import pytest
import requests
from ovhai.api.notebook import (
    notebook_create_from_backup,
    notebook_data_sync,
    notebook_delete,
    notebook_edit_label,
    notebook_get,
    notebook_get_all,
    notebook_get_backup,
    notebook_list_backup,
    notebook_new,
    notebook_start,
    notebook_stop,
)
from ovhai.models import (
    DataStoreVolumeSource,
    DataSync,
    DataSyncSpec,
    DataSyncSpecDirection,
    LabelUpdate,
    Notebook,
    NotebookEnv,
    NotebookSpec,
    NotebookSpecLabelsType0,
    Resources,
    Volume,
)

from nbcloud.notebooks.models import Notebook as NotebookRow
from support.editors import notebook_url
from support.ovhai_sdk import refused, sdk_client
from support.waiting import wait_for, wait_row_state

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def ovh(platform_server, celery_worker_process, conda_env, this_host, alice):
    """The SDK's client for Alice's token, at the platform's /ovhai; no editor left behind."""
    yield sdk_client(alice[1], base_url=f"{platform_server}/ovhai")
    from workers.lifecycle import runtime_for

    for notebook in NotebookRow.objects.all():
        if notebook.runtime_state:
            runtime_for(notebook).stop(5)


def read_when(client, notebook_id: str, state: str) -> Notebook:
    """The notebook as the SDK reads it, once its row is in `state`."""
    wait_row_state(notebook_id, state)
    return notebook_get.sync(notebook_id, client=client)


def ids(listing) -> list[str]:
    return [n.id for n in listing.items]


def test_an_ovh_script_runs_a_notebook_through_its_life(ovh, alice, platform_server):
    body = NotebookSpec(
        name="ovh-demo",
        env=NotebookEnv(framework_id="conda", editor_id="jupyterlab"),
        resources=Resources(cpu=1),
        labels=NotebookSpecLabelsType0.from_dict({"team": "vision"}),
    )
    created = notebook_new.sync(client=ovh, body=body)
    assert isinstance(created, Notebook) and created.status.state == "QUEUED"
    nb_id = created.id

    running = read_when(ovh, nb_id, "RUNNING")
    assert running.status.info.code == "RUNNING"
    assert running.status.url == notebook_url(platform_server, nb_id)
    assert running.status.last_started_at is not None
    editor = requests.get(
        f"{running.status.url}api/status",
        headers={"Authorization": f"Bearer {alice[1]}"},
        timeout=30,
    )
    assert editor.status_code == 200, editor.text  # the real JupyterLab, through the gateway

    assert ids(notebook_get_all.sync(client=ovh, label_selector="team=vision")) == [nb_id]
    assert ids(notebook_get_all.sync(client=ovh, label_selector="team=nlp")) == []
    assert ids(notebook_get_all.sync(client=ovh, status_state=["RUNNING"])) == [nb_id]

    relabel = notebook_edit_label.sync_detailed(
        nb_id, client=ovh, body=LabelUpdate(name="stage", value="demo")
    )
    assert relabel.status_code == 204, relabel.content
    labels = notebook_get.sync(nb_id, client=ovh).spec.labels.additional_properties
    assert labels == {"team": "vision", "stage": "demo"}
    assert ids(notebook_get_all.sync(client=ovh, label_selector="stage=demo")) == [nb_id]

    # Running, with no RW volume: the native refusal, in OVH's shape.
    push = DataSyncSpec(direction=DataSyncSpecDirection.PUSH)
    error = refused(lambda: notebook_data_sync.sync_detailed(nb_id, client=ovh, body=push), 400)
    assert "nothing to push" in error.message

    assert notebook_stop.sync_detailed(nb_id, client=ovh).status_code == 204
    stopped = read_when(ovh, nb_id, "STOPPED")
    assert stopped.status.workspace.storage_used > 0
    assert stopped.status.last_stopped_at > stopped.status.last_started_at

    backups = notebook_list_backup.sync(nb_id, client=ovh)
    assert backups.metadata.total == 1
    (backup,) = backups.items
    assert notebook_get_backup.sync(nb_id, backup.id, client=ovh).id == backup.id

    fork = notebook_create_from_backup.sync(nb_id, backup.id, client=ovh)
    assert isinstance(fork, Notebook) and fork.spec.name == "ovh-demo-fork"
    assert fork.spec.labels.additional_properties == {"team": "vision", "stage": "demo"}
    forked = read_when(ovh, fork.id, "RUNNING")
    assert forked.status.url == notebook_url(platform_server, fork.id)
    assert notebook_delete.sync_detailed(fork.id, client=ovh, force=True).status_code == 204

    assert notebook_start.sync_detailed(nb_id, client=ovh).status_code == 204
    restarted = read_when(ovh, nb_id, "RUNNING")
    assert restarted.status.last_started_at > running.status.last_started_at

    assert notebook_delete.sync_detailed(nb_id, client=ovh, force=True).status_code == 204
    for gone in (nb_id, fork.id):
        wait_row_state(gone, "DELETED", timeout=60)
        refused(lambda gone=gone: notebook_get.sync_detailed(gone, client=ovh), 404)
    assert notebook_get_all.sync(client=ovh).items == []


def test_datasync_pushes_a_running_notebooks_volume(ovh, alice, alice_api, s3_endpoint, s3_bucket):
    s3 = s3_bucket("ovh-data")
    store = {
        "alias": "gra",
        "type": "s3",
        "endpoint": s3_endpoint,
        "region": "us-east-1",
        "access_key": "testing",
        "secret_key": "testing",
    }
    added = alice_api.post("/api/v1/projects/alpha/datastores/", store, format="json")
    assert added.status_code == 201, added.content
    volume = Volume(
        mount_path="/workspace/data",
        permission="RW",
        data_store=DataStoreVolumeSource(alias="gra", container="ovh-data", prefix="out"),
    )
    body = NotebookSpec(
        name="with-data",
        env=NotebookEnv(framework_id="conda", editor_id="jupyterlab"),
        resources=Resources(cpu=1),
        volumes=[volume],
    )
    nb_id = notebook_new.sync(client=ovh, body=body).id
    running = read_when(ovh, nb_id, "RUNNING")
    assert running.spec.volumes[0].data_store.container == "ovh-data"

    # A file written in the notebook (through JupyterLab's contents API, via the gateway).
    wrote = requests.put(
        f"{running.status.url}api/contents/data/result.txt",
        json={"type": "file", "format": "text", "content": "trained"},
        headers={"Authorization": f"Bearer {alice[1]}"},
        timeout=30,
    )
    assert wrote.status_code in (200, 201), wrote.text

    push = DataSyncSpec(direction=DataSyncSpecDirection.PUSH)
    sync = notebook_data_sync.sync(nb_id, client=ovh, body=push)
    assert isinstance(sync, DataSync)
    assert sync.spec.direction == DataSyncSpecDirection.PUSH and sync.spec.manual is True
    assert sync.status.state == "QUEUED"

    def pushed():
        found = s3.list_objects_v2(Bucket="ovh-data", Prefix="out/").get("Contents", [])
        return [o["Key"] for o in found] == ["out/result.txt"]

    wait_for(pushed, timeout=60, what="out/result.txt in the bucket")
    body = s3.get_object(Bucket="ovh-data", Key="out/result.txt")["Body"].read()
    assert body == b"trained"
    (progress,) = notebook_get.sync(nb_id, client=ovh).status.data_sync
    assert progress.spec.direction == "push"
    assert progress.status.progress[0].info == "ovh-data@gra/out:/workspace/data:RW"

    assert notebook_delete.sync_detailed(nb_id, client=ovh, force=True).status_code == 204
    wait_row_state(nb_id, "DELETED")
