"""Object-storage volumes against a real S3 API (moto_server on loopback), through boto3.

Pull before start, push on stop and on demand, only what changed moving, the
project's cache on the host, multipart, and failures named in words.
"""

import os

import boto3
import pytest

from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.spec import parse_volume
from nbcloud.projects.models import Project
from support.factories import make_notebook, make_s3_datastore
from support.network import CuttingProxy
from support.services import stop_service
from support.waiting import wait_for
from workers import volumes

BUCKET = "datasets"
KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture
def s3(s3_bucket):
    return s3_bucket(BUCKET)


@pytest.fixture
def project(db, s3_endpoint, settings, tmp_path):
    settings.NBCLOUD_VOLUMES_DIR = tmp_path / "volumes"
    settings.NBCLOUD_VOLUME_CACHE_DIR = tmp_path / "cache"
    project = Project.objects.create(name="data")
    make_s3_datastore(project, s3_endpoint)
    return project


def _notebook(project, *specs):
    return make_notebook(project, volumes=[parse_volume(s).to_dict() for s in specs])


def _objects(s3, prefix="") -> dict[str, bytes]:
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
    return found


def _sync(notebook) -> list[dict]:
    return Notebook.objects.get(pk=notebook.pk).data_sync


def test_pull_mirrors_the_prefix_and_reports_progress(project, s3, tmp_path):
    s3.put_object(Bucket=BUCKET, Key="train/a.csv", Body=b"1,2,3\n")
    s3.put_object(Bucket=BUCKET, Key="train/sub/b.bin", Body=b"\x00" * 5000)
    s3.put_object(Bucket=BUCKET, Key="train/", Body=b"")  # a "folder" marker
    s3.put_object(Bucket=BUCKET, Key="other/c.txt", Body=b"not mine")
    notebook = _notebook(project, f"{BUCKET}@store/train:/workspace/data:RO")
    workspace = tmp_path / "ws"
    workspace.mkdir()

    mounts = volumes.prepare(notebook, workspace)

    assert [(m.target, m.read_only) for m in mounts] == [("/workspace/data", True)]
    data = tmp_path / "volumes" / str(notebook.pk) / "0"
    assert mounts[0].source == str(data)
    assert (data / "a.csv").read_bytes() == b"1,2,3\n"
    assert (data / "sub" / "b.bin").stat().st_size == 5000
    assert not (data / "c.txt").exists()
    assert (workspace / "data").is_dir()  # the mount point, inside the workspace
    [entry] = _sync(notebook)
    assert entry["direction"] == "pull" and entry["state"] == "DONE"
    assert (entry["files_done"], entry["files_total"]) == (2, 2)
    assert entry["bytes_done"] == entry["bytes_total"] == 5006


def test_push_sends_changes_rw_keeps_and_rwd_deletes_remote_files(project, s3, tmp_path):
    s3.put_object(Bucket=BUCKET, Key="keep.txt", Body=b"old")
    s3.put_object(Bucket=BUCKET, Key="gone.txt", Body=b"delete me")
    rw = _notebook(project, f"{BUCKET}@store:/workspace/data:RW")
    (tmp_path / "ws").mkdir()
    [mount] = volumes.prepare(rw, tmp_path / "ws")
    data = tmp_path / "volumes" / str(rw.pk) / "0"
    (data / "keep.txt").write_bytes(b"new")
    (data / "made" / "here.txt").parent.mkdir()
    (data / "made" / "here.txt").write_bytes(b"fresh")
    (data / "gone.txt").unlink()

    volumes.push(rw)

    assert _objects(s3) == {"keep.txt": b"new", "made/here.txt": b"fresh", "gone.txt": b"delete me"}
    [entry] = _sync(rw)
    assert entry["direction"] == "push" and entry["state"] == "DONE"
    assert entry["files_total"] == 2 and entry["bytes_done"] == len(b"new") + len(b"fresh")

    # A redelivered push moves nothing.
    volumes.push(rw)
    assert _sync(rw)[0]["files_total"] == 0

    rwd = _notebook(project, f"{BUCKET}@store:/workspace/data:RWD")
    volumes.prepare(rwd, tmp_path / "ws")
    (tmp_path / "volumes" / str(rwd.pk) / "0" / "gone.txt").unlink()
    volumes.push(rwd)
    assert set(_objects(s3)) == {"keep.txt", "made/here.txt"}


def test_ro_volumes_never_write(project, s3, tmp_path):
    s3.put_object(Bucket=BUCKET, Key="x.txt", Body=b"x")
    notebook = _notebook(project, f"{BUCKET}@store:/workspace/data:RO")
    (tmp_path / "ws").mkdir()
    volumes.prepare(notebook, tmp_path / "ws")
    data = tmp_path / "volumes" / str(notebook.pk) / "0"
    (data / "x.txt").write_bytes(b"changed on the host")
    (data / "new.txt").write_bytes(b"new")
    volumes.push(notebook)
    assert _objects(s3) == {"x.txt": b"x"}


def test_cache_is_reused_by_the_projects_next_notebook(project, s3, tmp_path):
    for i in range(5):
        s3.put_object(Bucket=BUCKET, Key=f"d/{i}.bin", Body=os.urandom(1000))
    spec = f"{BUCKET}@store/d:/workspace/data:RO:cache"
    first = _notebook(project, spec)
    (tmp_path / "ws").mkdir()
    [mount] = volumes.prepare(first, tmp_path / "ws")
    # The notebook gets its own copy: the project's cache is never bound into one.
    assert mount.source == str(tmp_path / "volumes" / str(first.pk) / "0")
    cache = tmp_path / "cache" / str(project.pk)
    assert sorted(p.name for p in cache.rglob("*.bin")) == [f"{i}.bin" for i in range(5)]
    assert (cache.stat().st_mode & 0o777) == 0o700
    assert _sync(first)[0]["files_total"] == 5
    volumes.remove_local(first)  # first stops: the cache stays
    assert not os.path.exists(mount.source)

    s3.put_object(Bucket=BUCKET, Key="d/1.bin", Body=b"changed")
    s3.delete_object(Bucket=BUCKET, Key="d/4.bin")
    second = _notebook(project, spec)
    [again] = volumes.prepare(second, tmp_path / "ws")
    assert again.source == str(tmp_path / "volumes" / str(second.pk) / "0")
    [entry] = _sync(second)
    assert (entry["files_total"], entry["bytes_total"]) == (1, len(b"changed"))  # from S3
    assert sorted(p.name for p in cache.rglob("*.bin")) == ["0.bin", "1.bin", "2.bin", "3.bin"]
    copy = tmp_path / "volumes" / str(second.pk) / "0"
    assert sorted(p.name for p in copy.iterdir()) == ["0.bin", "1.bin", "2.bin", "3.bin"]
    assert (copy / "1.bin").read_bytes() == b"changed"

    # A third notebook beside it gets its own copy too; nothing shared between them.
    Notebook.objects.filter(pk=second.pk).update(state="RUNNING")
    third = _notebook(project, spec)
    [own] = volumes.prepare(third, tmp_path / "ws")
    assert own.source == str(tmp_path / "volumes" / str(third.pk) / "0")
    assert _sync(third)[0]["files_total"] == 0  # all in the cache already
    mine = tmp_path / "volumes" / str(third.pk) / "0" / "0.bin"
    assert os.stat(mine).st_ino != os.stat(copy / "0.bin").st_ino
    assert mine.read_bytes() == (copy / "0.bin").read_bytes()


def test_cache_unused_for_its_ttl_is_pruned(project, s3, tmp_path, settings):
    s3.put_object(Bucket=BUCKET, Key="a", Body=b"a")
    notebook = _notebook(project, f"{BUCKET}@store:/workspace/data:RO:cache")
    (tmp_path / "ws").mkdir()
    [mount] = volumes.prepare(notebook, tmp_path / "ws")
    assert volumes.prune_cache() == 0  # just used
    volumes.remove_local(notebook)
    settings.NBCLOUD_VOLUME_CACHE_TTL = 72 * 3600
    import time

    assert volumes.prune_cache(now=time.time() + 71 * 3600) == 0
    assert volumes.prune_cache(now=time.time() + 73 * 3600) == 1
    assert not list((tmp_path / "cache" / str(project.pk)).glob("*"))


def test_large_files_go_multipart(project, s3, tmp_path, settings):
    settings.NBCLOUD_S3_PART_SIZE = 5 * 1024 * 1024
    notebook = _notebook(project, f"{BUCKET}@store/big:/workspace/data:RW")
    (tmp_path / "ws").mkdir()
    volumes.prepare(notebook, tmp_path / "ws")
    payload = os.urandom(12 * 1024 * 1024)
    (tmp_path / "volumes" / str(notebook.pk) / "0" / "model.pt").write_bytes(payload)
    volumes.push(notebook)
    head = s3.head_object(Bucket=BUCKET, Key="big/model.pt")
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    assert _objects(s3, "big/")["big/model.pt"] == payload

    # And it comes back the same way, into another notebook.
    other = _notebook(project, f"{BUCKET}@store/big:/workspace/data:RO")
    volumes.prepare(other, tmp_path / "ws")
    assert (tmp_path / "volumes" / str(other.pk) / "0" / "model.pt").read_bytes() == payload


def test_network_failure_mid_push_aborts_and_the_next_push_resumes(
    project, s3, s3_endpoint, tmp_path, settings
):
    settings.NBCLOUD_S3_PART_SIZE = 5 * 1024 * 1024
    notebook = _notebook(project, f"{BUCKET}@store:/workspace/data:RW")
    (tmp_path / "ws").mkdir()
    volumes.prepare(notebook, tmp_path / "ws")
    data = tmp_path / "volumes" / str(notebook.pk) / "0"
    (data / "big.bin").write_bytes(os.urandom(20 * 1024 * 1024))
    store = project.datastores.get()
    proxy = CuttingProxy(int(s3_endpoint.rsplit(":", 1)[1]), limit=3 * 1024 * 1024)
    store.endpoint = f"http://127.0.0.1:{proxy.port}"
    store.save()
    try:
        with pytest.raises(volumes.VolumeError) as failed:
            volumes.push(notebook)
    finally:
        proxy.close()
    assert "volume datasets@store:/workspace/data:RW" in str(failed.value)
    assert "testing" not in str(failed.value)  # no credentials in messages
    assert _sync(notebook)[0]["state"] == "FAILED"
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert "big.bin" not in _objects(s3)

    store.endpoint = s3_endpoint
    store.save()
    volumes.push(notebook)
    assert len(_objects(s3)["big.bin"]) == 20 * 1024 * 1024


def test_failed_pulls_say_which_volume_and_why(project, s3, tmp_path):
    (tmp_path / "ws").mkdir()
    missing = _notebook(project, "nope@store:/workspace/data:RO")
    with pytest.raises(volumes.VolumeError, match="the bucket 'nope' does not exist"):
        volumes.prepare(missing, tmp_path / "ws")
    assert _sync(missing)[0]["state"] == "FAILED"

    store = project.datastores.get()
    store.endpoint = "http://127.0.0.1:9"  # nothing listens there
    store.save()
    down = _notebook(project, f"{BUCKET}@store:/workspace/data:RO")
    with pytest.raises(volumes.VolumeError, match="cannot reach the endpoint http://127.0.0.1:9"):
        volumes.prepare(down, tmp_path / "ws")

    store.delete()
    gone = _notebook(project, f"{BUCKET}@store:/workspace/data:RO")
    with pytest.raises(volumes.VolumeError, match="no datastore 'store' any more"):
        volumes.prepare(gone, tmp_path / "ws")


@pytest.fixture
def s3_with_auth(tmp_path):
    """A second moto_server that checks credentials (IAM), with one valid key pair."""
    import subprocess
    import sys
    from pathlib import Path

    from workers.runtimes.process import free_port

    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", **KEYS)
    wait_for(lambda: _reachable(iam), timeout=30, what="moto_server with auth")
    iam.create_user(UserName="reader")
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    iam.put_user_policy(
        UserName="reader",
        PolicyName="all-s3",
        PolicyDocument='{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", '
        '"Action": "s3:*", "Resource": "*"}]}',
    )
    yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    stop_service(proc)


def _reachable(iam) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", iam.meta.endpoint_url.rsplit(":", 1)[1])).close()
        return True
    except OSError:
        return False


def test_wrong_credentials_are_named_without_revealing_them(project, s3_with_auth, tmp_path):
    endpoint, access_key, secret_key = s3_with_auth
    good = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
    )
    good.create_bucket(Bucket=BUCKET)
    good.put_object(Bucket=BUCKET, Key="a.txt", Body=b"a")
    store = project.datastores.get()
    store.endpoint, store.access_key = endpoint, access_key
    store.set_secrets({"secret_key": "not-the-secret"})
    store.save()
    (tmp_path / "ws").mkdir()
    notebook = _notebook(project, f"{BUCKET}@store:/workspace/data:RO")
    with pytest.raises(volumes.VolumeError) as refused:
        volumes.prepare(notebook, tmp_path / "ws")
    message = str(refused.value)
    assert "datastore 'store' refused its credentials" in message
    assert "not-the-secret" not in message and access_key not in message

    store.set_secrets({"secret_key": secret_key})
    store.save()
    [mount] = volumes.prepare(notebook, tmp_path / "ws")
    assert (tmp_path / "volumes" / str(notebook.pk) / "0" / "a.txt").read_bytes() == b"a"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (root)")
def test_a_full_disk_during_a_pull_names_the_cause_and_keeps_nothing(
    project, s3, tmp_path, settings
):
    import subprocess

    for n in range(4):
        s3.put_object(Bucket=BUCKET, Key=f"big/{n}.bin", Body=os.urandom(400_000))
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        settings.NBCLOUD_VOLUMES_DIR = small / "volumes"
        notebook = _notebook(project, f"{BUCKET}@store/big:/workspace/data:RO")
        (tmp_path / "ws").mkdir()
        with pytest.raises(volumes.VolumeError, match="ran out of disk space") as failed:
            volumes.prepare(notebook, tmp_path / "ws")
        assert f"{BUCKET}@store/big" in str(failed.value)
        assert _sync(notebook)[0]["state"] == "FAILED"
        assert not (small / "volumes" / str(notebook.pk) / "0").exists()
        # The host keeps working: the space is free again.
        (small / "probe").write_bytes(b"x" * 700_000)
    finally:
        subprocess.run(["umount", str(small)], check=True)
