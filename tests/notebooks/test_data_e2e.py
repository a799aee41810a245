"""End to end with data: an S3 volume (RW) and a git volume, through a real worker and JupyterLab.

The kernel reads the pulled object and the cloned file, writes into the RW
mount and the workspace; a datasync and a stop push the object; a start
brings everything back; a fork of the backup finds the same files.
"""

import pytest

from nbcloud.notebooks.models import Notebook
from support.editors import Kernel
from support.waiting import wait_for, wait_state

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

BUCKET = "e2e-data"


@pytest.fixture
def bucket(s3_bucket):
    client = s3_bucket(BUCKET)
    client.put_object(Bucket=BUCKET, Key="input/data.csv", Body=b"x,y\n1,2\n")
    return client


def _read(kernel: Kernel, path: str) -> str:
    return kernel.execute(f"print(open({path!r}).read(), end='')")


def test_volumes_workspace_backup_and_fork(
    platform_server,
    celery_worker_process,
    conda_env,
    this_host,
    alice_api,
    alice,
    bucket,
    s3_endpoint,
    git_daemon,
):
    base = "/api/v1/projects/alpha/"
    store = {
        "alias": "store",
        "type": "s3",
        "endpoint": s3_endpoint,
        "region": "us-east-1",
        "access_key": "testing",
        "secret_key": "testing",
    }
    assert alice_api.post(base + "datastores/", store, format="json").status_code == 201
    spec = {
        "name": "with-data",
        "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
        "resources": {"cpu": 1},
        "volumes": [
            f"{BUCKET}@store/input:/workspace/data:RW",
            f"{git_daemon}/demo.git:/workspace/repo:RO",
        ],
    }
    created = alice_api.post(base + "notebooks/", spec, format="json")
    assert created.status_code == 201, created.content
    url = f"{base}notebooks/{created.json()['id']}/"
    running = wait_state(alice_api, url, "RUNNING")
    assert [(d["direction"], d["state"]) for d in running["data_sync"]] == [
        ("pull", "DONE"),
        ("pull", "DONE"),
    ]
    headers = {"Authorization": f"Bearer {alice[1]}"}

    kernel = Kernel(running["url"], headers)
    assert _read(kernel, "/workspace/data/data.csv") == "x,y\n1,2\n"
    assert _read(kernel, "/workspace/repo/README.md") == "version 2\n"
    kernel.execute("open('/workspace/data/result.txt', 'w').write('42')")
    kernel.execute("open('/workspace/notes.txt', 'w').write('my notes')")
    kernel.close()

    # On demand, while it runs.
    assert alice_api.post(url + "datasync/").status_code == 202
    wait_for(
        lambda: (
            "input/result.txt"
            in {o["Key"] for o in bucket.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
        ),
        what="result.txt pushed by datasync",
    )

    kernel = Kernel(running["url"], headers)
    kernel.execute("open('/workspace/data/result.txt', 'w').write('43')")
    kernel.close()
    assert alice_api.post(url + "stop/").status_code == 202
    stopped = wait_state(alice_api, url, "STOPPED")
    assert stopped["data_sync"][0]["direction"] == "push"
    assert bucket.get_object(Bucket=BUCKET, Key="input/result.txt")["Body"].read() == b"43"
    backups = alice_api.get(url + "backups/").json()["results"]
    assert len(backups) == 1
    # Volume data lives in the bucket, not in the workspace backup.
    assert backups[0]["workspace_size"] < 100_000

    assert alice_api.post(url + "start/").status_code == 202
    again = wait_state(alice_api, url, "RUNNING")
    kernel = Kernel(again["url"], headers)
    assert _read(kernel, "/workspace/notes.txt") == "my notes"
    assert _read(kernel, "/workspace/data/result.txt") == "43"
    assert _read(kernel, "/workspace/repo/README.md") == "version 2\n"
    kernel.close()
    assert alice_api.post(url + "stop/").status_code == 202
    wait_state(alice_api, url, "STOPPED")

    latest = alice_api.get(url + "backups/").json()["results"][0]
    assert alice_api.get(f"{url}backups/{latest['id']}/").json()["sha256"] == latest["sha256"]
    forked = alice_api.post(f"{url}backups/{latest['id']}/fork/", {"name": "twin"}, format="json")
    assert forked.status_code == 201, forked.content
    assert forked.json()["spec"]["name"] == "twin"
    fork_url = f"{base}notebooks/{forked.json()['id']}/"
    twin = wait_state(alice_api, fork_url, "RUNNING")
    kernel = Kernel(twin["url"], headers)
    assert _read(kernel, "/workspace/notes.txt") == "my notes"
    assert _read(kernel, "/workspace/data/result.txt") == "43"
    assert _read(kernel, "/workspace/repo/README.md") == "version 2\n"
    kernel.close()
    codes = [e["code"] for e in alice_api.get(fork_url + "events/").json()["results"]]
    assert "FORKED" in codes
    assert alice_api.post(fork_url + "stop/").status_code == 202
    wait_state(alice_api, fork_url, "STOPPED")
    assert Notebook.objects.get(pk=forked.json()["id"]).forked_from_id is not None


def test_a_failed_pull_fails_the_start_with_the_volume_and_reason(
    platform_server, celery_worker_process, conda_env, this_host, alice_api, s3_endpoint
):
    base = "/api/v1/projects/alpha/"
    store = {
        "alias": "store",
        "type": "s3",
        "endpoint": s3_endpoint,
        "access_key": "testing",
        "secret_key": "testing",
    }
    assert alice_api.post(base + "datastores/", store, format="json").status_code == 201
    spec = {
        "name": "no-bucket",
        "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
        "resources": {"cpu": 1},
        "volumes": ["missing-bucket@store:/workspace/data:RO"],
    }
    created = alice_api.post(base + "notebooks/", spec, format="json")
    url = f"{base}notebooks/{created.json()['id']}/"
    failed = wait_state(alice_api, url, "FAILED")
    assert failed["info"]["code"] == "DATA_SYNC_FAILED"
    assert "missing-bucket@store:/workspace/data:RO" in failed["info"]["message"]
    assert "does not exist" in failed["info"]["message"]
    assert "testing" not in failed["info"]["message"]
    assert failed["data_sync"][0]["state"] == "FAILED"
    # Nothing is held: the host's capacity is free again.
    assert Notebook.objects.get(pk=created.json()["id"]).host_id is None
