"""Workspace backups on an S3-compatible object store (a real moto_server on loopback).

The same code as the local-directory backend, behind Django's Storage
interface: streamed multipart uploads, checksums, retention, and a network
failure in the middle of an upload that leaves nothing behind.
"""

import os
import socket

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError

from nbcloud.notebooks.models import Backup
from nbcloud.projects.models import Project
from support.factories import make_notebook
from support.network import CuttingProxy
from workers import workspace

BUCKET = "nbcloud-backups"


@pytest.fixture
def s3(s3_bucket):
    return s3_bucket(BUCKET)


def _use_s3(settings, endpoint: str, tmp_path) -> None:
    from botocore.config import Config

    settings.NBCLOUD_WORKSPACES_DIR = tmp_path / "workspaces"
    settings.STORAGES = {
        **settings.STORAGES,
        "backups": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": BUCKET,
                "endpoint_url": endpoint,
                "region_name": "us-east-1",
                "access_key": "testing",
                "secret_key": "testing",
                "location": "backups",
                "file_overwrite": False,
                "client_config": Config(
                    connect_timeout=5, read_timeout=10, retries={"max_attempts": 2}
                ),
            },
        },
    }


@pytest.fixture
def notebook(db):
    return make_notebook(Project.objects.create(name="s3"))


def _objects(s3) -> dict[str, int]:
    return {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


def test_backup_streams_to_s3_and_restores(notebook, s3, s3_endpoint, settings, tmp_path):
    _use_s3(settings, s3_endpoint, tmp_path)
    path = workspace.prepare(notebook)
    payload = os.urandom(12 * 1024 * 1024)  # incompressible: a multipart upload
    (path / "data.bin").write_bytes(payload)
    (path / ".local" / "lib").mkdir(parents=True)
    (path / ".local" / "lib" / "pkg.py").write_text("X = 1\n")

    record = workspace.backup(notebook)
    assert _objects(s3) == {f"backups/{record.storage_name}": record.size}
    assert record.size > 12 * 1024 * 1024

    workspace.remove_local(notebook)
    restored = workspace.prepare(notebook)
    assert (restored / "data.bin").read_bytes() == payload
    assert (restored / ".local" / "lib" / "pkg.py").read_text() == "X = 1\n"


def test_corrupt_object_is_refused(notebook, s3, s3_endpoint, settings, tmp_path):
    _use_s3(settings, s3_endpoint, tmp_path)
    path = workspace.prepare(notebook)
    (path / "f.txt").write_text("x" * 1000)
    record = workspace.backup(notebook)
    workspace.remove_local(notebook)
    key = f"backups/{record.storage_name}"
    body = bytearray(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body[-20] ^= 0xFF
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
    with pytest.raises(workspace.StartError, match="corrupt") as failed:
        workspace.prepare(notebook)
    assert isinstance(failed.value.__cause__, OSError | EOFError | workspace.ChecksumMismatch)
    assert not path.exists()


def test_a_start_while_the_object_store_is_down_says_so_and_blames_no_backup(
    notebook, s3, s3_endpoint, settings, tmp_path
):
    """The download fails before a byte arrives: the archive reads as empty, but the
    cause is the store, not the backup (found by tests/faults/test_chaos.py)."""
    _use_s3(settings, s3_endpoint, tmp_path)
    path = workspace.prepare(notebook)
    (path / "kept.txt").write_text("kept\n")
    workspace.backup(notebook)
    workspace.remove_local(notebook)
    with socket.socket() as probe:  # a port where no object store answers
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    _use_s3(settings, dead, tmp_path)

    with pytest.raises(workspace.StartError) as failed:
        workspace.prepare(notebook)
    assert "corrupt" not in failed.value.user_message
    assert "the object store may be down" in failed.value.user_message
    assert isinstance(failed.value.__cause__, BotoCoreError)
    assert not path.exists()

    _use_s3(settings, s3_endpoint, tmp_path)  # the store is back: the backup is whole
    assert (workspace.prepare(notebook) / "kept.txt").read_text() == "kept\n"


def test_retention_deletes_old_objects(notebook, s3, s3_endpoint, settings, tmp_path):
    _use_s3(settings, s3_endpoint, tmp_path)
    settings.NBCLOUD_BACKUP_RETENTION = 2
    path = workspace.prepare(notebook)
    for i in range(4):
        (path / "n.txt").write_text(str(i))
        workspace.backup(notebook)
    kept = {f"backups/{b.storage_name}" for b in notebook.backups.all()}
    assert set(_objects(s3)) == kept and len(kept) == 2


def test_network_failure_mid_upload_leaves_nothing(notebook, s3, s3_endpoint, settings, tmp_path):
    proxy = CuttingProxy(int(s3_endpoint.rsplit(":", 1)[1]), limit=3 * 1024 * 1024)
    try:
        _use_s3(settings, f"http://127.0.0.1:{proxy.port}", tmp_path)
        path = workspace.prepare(notebook)
        (path / "data.bin").write_bytes(os.urandom(20 * 1024 * 1024))
        with pytest.raises((S3UploadFailedError, BotoCoreError, ClientError)):
            workspace.backup(notebook)
    finally:
        proxy.close()
    assert Backup.objects.count() == 0
    assert _objects(s3) == {}
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert (path / "data.bin").stat().st_size == 20 * 1024 * 1024  # the workspace is untouched


@pytest.mark.django_db
def test_a_stop_while_the_object_store_is_down_keeps_the_workspace_and_retries(
    s3, s3_endpoint, settings, tmp_path, django_capture_on_commit_callbacks
):
    """The notebook is not lost: it stays STOPPING with its workspace on the host, the
    status says why, the stop tries again with a growing delay, and once the store is
    back the workspace is saved and the notebook STOPPED."""
    from nbcloud.hosts.models import Host
    from nbcloud.notebooks.models import Notebook
    from workers import lifecycle

    with socket.socket() as probe:  # a port where no object store answers
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    _use_s3(settings, dead, tmp_path)
    host = Host.objects.create(name="h", region="GRA", cpus=4, memory_bytes=2**34, disk_bytes=2**36)
    row = make_notebook(
        Project.objects.create(name="s3"), state="STOPPING", host=host, editor_secret="s" * 48
    )
    (workspace.local_path(row)).mkdir(parents=True)
    (workspace.local_path(row) / "results.txt").write_text("an afternoon of work\n")

    with django_capture_on_commit_callbacks(execute=False) as sent:
        lifecycle.stop(str(row.pk), "h")
    row = Notebook.objects.get(pk=row.pk)
    assert row.state == "STOPPING" and row.host_id == host.pk  # capacity held
    assert row.info_code == "BACKUP_RETRY"
    assert "kept on host h" in row.info_message and "in 15 s" in row.info_message
    assert (workspace.local_path(row) / "results.txt").exists()
    retry = [(t.name, t.kwargs, t.options) for c in sent for t in c.tasks]
    assert retry == [("notebooks.stop", {"host": "h", "attempt": 1}, {"countdown": 15})]

    # Reconcile sends the stop again meanwhile: it tries once, and starts no second chain.
    with django_capture_on_commit_callbacks(execute=False) as sent:
        lifecycle.stop(str(row.pk), "h")
    assert sent == []
    # The chain's next attempt waits twice as long.
    with django_capture_on_commit_callbacks(execute=False) as sent:
        lifecycle.stop(str(row.pk), "h", attempt=1)
    assert [t.options for c in sent for t in c.tasks] == [{"countdown": 30}]
    assert Backup.objects.count() == 0

    _use_s3(settings, s3_endpoint, tmp_path)  # the store is back
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.stop(str(row.pk), "h", attempt=2)
    row = Notebook.objects.get(pk=row.pk)
    assert row.state == "STOPPED" and row.host_id is None
    assert not workspace.local_path(row).exists()
    restored = workspace.prepare(row)
    assert (restored / "results.txt").read_text() == "an afternoon of work\n"
    assert row.events.filter(code="BACKUP_RETRY").count() == 3
