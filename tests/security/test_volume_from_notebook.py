"""The link attacks from inside a real running notebook: kernel code through the gateway.

A real Celery worker (root) and a real JupyterLab; the kernel plants links in
its RW volume to a root-owned 0600 secret in a 0700 directory of the host, and
keeps swapping a directory of the volume for a link to that directory while
datasyncs and the stop's push run. The bucket never receives the secret, the
secret is unchanged, and the next start (restore and pull) still works with
a link to the host left in the workspace.
"""

import os
import stat
import textwrap

import pytest

from support.editors import Kernel
from support.waiting import wait_for, wait_state

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are on root's file work"),
]

BUCKET = "e2e-attacked"
SECRET = b"host secret_key 0d5e...\n"


def _bodies(client) -> dict[str, bytes]:
    found = {}
    for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        found[item["Key"]] = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
    return found


RACE = textwrap.dedent(
    """
    import ctypes, os, threading, time
    libc = ctypes.CDLL(None, use_errno=True)
    os.makedirs("/workspace/data/d", exist_ok=True)
    open("/workspace/data/d/secret", "wb").write(b"benign")
    os.symlink(VAULT, "/workspace/data/swap")
    os.symlink(VAULT + "/secret", "/workspace/data/leak.txt")
    os.symlink(VAULT, "/workspace/data/leakdir")
    real = os.open("/workspace/data/d", os.O_RDONLY | os.O_DIRECTORY)
    race = {"swaps": 0, "stop": False}

    def swapper():
        while not race["stop"]:
            libc.renameat2(-100, b"/workspace/data/d", -100, b"/workspace/data/swap", 2)
            race["swaps"] += 1
            if race["swaps"] % 100 == 0:
                os.utime("secret", dir_fd=real)  # changed again: the next push sends it

    threading.Thread(target=swapper, daemon=True).start()
    time.sleep(0.5)
    print(race["swaps"] > 0)
    """
)


def test_links_and_the_push_race_from_inside_a_running_notebook(
    platform_server,
    celery_worker_process,
    conda_env,
    this_host,
    alice_api,
    alice,
    s3_bucket,
    s3_endpoint,
    tmp_path_factory,
):
    vault = tmp_path_factory.mktemp("vault")
    vault.chmod(0o700)
    (vault / "secret").write_bytes(SECRET)
    (vault / "secret").chmod(0o600)
    before = os.stat(vault / "secret")
    client = s3_bucket(BUCKET)
    client.put_object(Bucket=BUCKET, Key="input/keep.txt", Body=b"keep")

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
        "name": "attacker",
        "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
        "resources": {"cpu": 1},
        "volumes": [f"{BUCKET}@store/input:/workspace/data:RW"],
    }
    created = alice_api.post(base + "notebooks/", spec, format="json")
    assert created.status_code == 201, created.content
    url = f"{base}notebooks/{created.json()['id']}/"
    running = wait_state(alice_api, url, "RUNNING")
    headers = {"Authorization": f"Bearer {alice[1]}"}

    kernel = Kernel(running["url"], headers)
    assert kernel.execute(f"VAULT = {str(vault)!r}\n" + RACE).strip() == "True"
    # A link to the host left in the workspace: restores keep it as a link.
    kernel.execute(f"import os; os.symlink({str(vault)!r}, '/workspace/to-host')")

    def syncs_done() -> int:
        events = alice_api.get(url + "events/").json()["results"]
        return sum(e["message"] == "Data sync done." for e in events)

    # At least six pushes, and more until one of them caught the directory in place
    # (which shows the race really ran through the push): the secret never goes.
    benign_sent = 0
    for i in range(30):
        assert alice_api.post(url + "datasync/").status_code == 202
        wait_for(lambda i=i: syncs_done() > i, timeout=60, what=f"datasync {i + 1}")
        bodies = _bodies(client)
        assert not [k for k, body in bodies.items() if SECRET.strip() in body], bodies.keys()
        benign_sent += b"benign" in bodies.values()
        if i >= 5 and benign_sent:
            break
    swaps = int(kernel.execute("race['stop'] = True; print(race['swaps'])"))
    kernel.close()
    assert swaps > 1000 and benign_sent > 0

    assert alice_api.post(url + "stop/").status_code == 202
    wait_state(alice_api, url, "STOPPED")
    bodies = _bodies(client)
    assert not [k for k, body in bodies.items() if SECRET.strip() in body]
    assert not {"input/leak.txt"} & set(bodies)
    assert not [k for k in bodies if k.startswith("input/leakdir")]
    after = os.stat(vault / "secret")
    assert (after.st_ino, after.st_uid, stat.S_IMODE(after.st_mode), after.st_mtime_ns) == (
        before.st_ino,
        0,
        0o600,
        before.st_mtime_ns,
    )
    assert (vault / "secret").read_bytes() == SECRET
    assert sorted(os.listdir(vault)) == ["secret"]

    # The next start restores the workspace (its link to the host kept, as a link) and pulls.
    assert alice_api.post(url + "start/").status_code == 202
    again = wait_state(alice_api, url, "RUNNING")
    kernel = Kernel(again["url"], headers)
    assert kernel.execute("import os; print(os.readlink('/workspace/to-host'))").strip() == str(
        vault
    )
    assert kernel.execute("print(open('/workspace/data/keep.txt').read())").strip() == "keep"
    assert kernel.execute("print(os.path.lexists('/workspace/data/leak.txt'))").strip() == "False"
    kernel.close()
    assert alice_api.post(url + "stop/").status_code == 202
    wait_state(alice_api, url, "STOPPED")
    assert (vault / "secret").read_bytes() == SECRET
