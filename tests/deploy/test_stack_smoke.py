"""The whole stack from compose/, up on this machine and driven only from outside, as
a user and an operator would: HTTPS through Caddy (its own CA), `nbc`, and the
operator's `docker-compose exec ... manage.py` commands.

compose/ci/stack.sh brings it up (compose/docker-compose.yml with the CI override's
Debian stand-ins, the platform's real image, a second host joined with
compose/host.yml) and removes it afterwards. It needs a Docker Engine, docker-compose
and the images (`make ci-images`): without them the module is skipped, saying so, or
fails where NBCLOUD_REQUIRE_DOCKER is set (CI). NBCLOUD_STACK_KEEP=1 leaves the stack
up for a look (`compose/ci/stack.sh down` removes it).

One scenario, in order: a token, a datastore with data, a notebook on the docker
runtime with an object-storage and a git volume, a cell run on its own origin through
the proxy, its logs, stop, usage, a start on the other host after draining the first
(the workspace comes back from object storage), restarts of web and the workers that
lose nothing, delete; Prometheus scrapes every target and loads the alert rules.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from support.editors import Kernel
from support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "compose" / "ci" / "stack.sh"
ENV = dict(
    line.split("=", 1)
    for line in (ROOT / "compose" / "ci.env").read_text().splitlines()
    if line and not line.startswith("#")
)
URL = f"https://localhost:{ENV['CADDY_HTTPS_PORT']}"
S3 = f"http://127.0.0.1:{ENV['S3_PORT']}"
PROMETHEUS = f"http://127.0.0.1:{ENV['PROMETHEUS_PORT']}"
IMAGE = os.environ.get("NBCLOUD_IMAGE", "nbcloud/platform:latest")
NBC = Path(sys.executable).parent / "nbc"

pytestmark = pytest.mark.stack


def _unavailable(reason: str):
    if os.environ.get("NBCLOUD_REQUIRE_DOCKER"):
        pytest.fail(f"{reason} (NBCLOUD_REQUIRE_DOCKER is set)")
    pytest.skip(f"{reason}; set NBCLOUD_REQUIRE_DOCKER=1 to make this a failure")


def stack(*args: str, timeout: float = 600, check: bool = True) -> str:
    done = subprocess.run(
        [str(STACK), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    if check and done.returncode != 0:
        raise AssertionError(f"stack.sh {' '.join(args)}: {done.stdout}\n{done.stderr}")
    return done.stdout


def manage(*args: str) -> str:
    """An operator's command on the control plane: manage.py in the web container."""
    return stack("main", "exec", "-T", "web", "python", "manage.py", *args).strip()


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    if shutil.which("docker-compose") is None:
        _unavailable("docker-compose is missing (make compose-tools installs Debian's)")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        _unavailable("no Docker Engine here; start dockerd")
    for image in (IMAGE, "nbcloud/ci-services:latest", "nbcloud/conda:py311"):
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode:
            _unavailable(f"the image {image} is missing: run make ci-images")
    stack("down", check=False)  # what an interrupted run left
    began = time.monotonic()
    try:
        stack("up")
    except AssertionError:
        stack("down", check=False)
        raise
    print(f"stack up in {time.monotonic() - began:.0f} s")
    folder = tmp_path_factory.mktemp("stack")
    ca = folder / "caddy-root.crt"
    ca.write_text(
        stack("main", "exec", "-T", "caddy", "cat", "/data/caddy/pki/authorities/local/root.crt")
    )
    with pytest.MonkeyPatch.context() as patch:
        # This process's requests (the kernels) trust the stack's CA, as nbc does.
        patch.setenv("REQUESTS_CA_BUNDLE", str(ca))
        yield {"ca": str(ca), "folder": folder}
    if not os.environ.get("NBCLOUD_STACK_KEEP"):
        stack("down", check=False)


@pytest.fixture(scope="module")
def user(up, tmp_path_factory):
    """`nbc` for a user with a token the operator made, trusting the stack's CA."""
    token = manage("createapitoken", "alice", "--project", "demo")
    env = {
        **os.environ,
        "NBC_CONFIG": str(up["folder"] / "nbc.toml"),
        "SSL_CERT_FILE": up["ca"],
        "REQUESTS_CA_BUNDLE": up["ca"],
        "COLUMNS": "200",
    }
    done = subprocess.run(
        [str(NBC), "login", "--url", URL, "--token", token, "--project", "demo"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return {"token": token, "env": env, "ca": up["ca"]}


def nbc(user, *args: str, timeout: float = 600) -> str:
    done = subprocess.run(
        [str(NBC), *args], capture_output=True, text=True, env=user["env"], timeout=timeout
    )
    assert done.returncode == 0, f"nbc {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done.stdout


def nbc_json(user, *args: str, timeout: float = 600):
    return json.loads(nbc(user, *args, "-o", "json", timeout=timeout))


@pytest.fixture(scope="module")
def git_repo(tmp_path_factory):
    """A repository served by git daemon on loopback, which the host workers (on the
    host's network) clone."""
    import git

    from support.services import listening, stop_service
    from workers.runtimes.process import free_port

    root = tmp_path_factory.mktemp("repos")
    work = git.Repo.init(root / "work", initial_branch="main")
    (root / "work" / "README.md").write_text("from git\n")
    work.index.add(["README.md"])
    work.index.commit("first")
    work.clone(root / "demo.git", bare=True)
    port = free_port()
    proc = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
            f"--port={port}",
            f"--base-path={root}",
            str(root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: listening(port), timeout=20, what="git daemon")
    yield f"git://127.0.0.1:{port}/demo.git"
    stop_service(proc)


STATE: dict = {}


def kernel(user, url: str) -> Kernel:
    return Kernel(url, {"Authorization": f"Bearer {user['token']}"})


def test_tls_through_caddy_with_secure_cookies(up):
    reply = requests.get(f"{URL}/accounts/login/", verify=up["ca"], timeout=30)
    assert reply.status_code == 200
    assert reply.url.startswith("https://")
    csrf = next(c for c in reply.cookies if c.name == "csrftoken")
    assert csrf.secure  # the platform knows it is served over https (X-Forwarded-Proto)
    # Plain http is redirected to https.
    http = f"http://localhost:{ENV['CADDY_HTTP_PORT']}/accounts/login/"
    redirect = requests.get(http, allow_redirects=False, timeout=10)
    assert redirect.status_code in (301, 308)
    # (To the standard port: Caddy leaves a non-standard https_port out.)
    location = urlsplit(redirect.headers["Location"])
    assert (location.scheme, location.hostname, location.path) == (
        "https",
        "localhost",
        "/accounts/login/",
    )


def test_a_notebook_with_volumes_runs_a_cell_on_its_own_origin(user, git_repo):
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=S3,
        region_name="us-east-1",
        aws_access_key_id="lake",
        aws_secret_access_key="lake",
    )
    s3.create_bucket(Bucket="datasets")
    s3.put_object(Bucket="datasets", Key="input/data.csv", Body=b"x,y\n1,2\n")
    nbc(
        user,
        "datastore",
        "add",
        "s3",
        "lake",
        "--endpoint",
        S3,
        "--region",
        "us-east-1",
        "--access-key",
        "lake",
        "--secret-key",
        "lake",
    )
    created = nbc_json(
        user,
        "notebook",
        "run",
        "conda",
        "jupyterlab",
        "--cpu",
        "1",
        "--name",
        "smoke",
        "-v",
        "datasets@lake/input:/workspace/data:RW",
        "-v",
        f"{git_repo}:/workspace/repo:RO",
        "--wait",
        "--timeout",
        "300",
    )
    assert created["status"]["state"] == "RUNNING", created["status"]
    url = created["status"]["url"]
    nid = created["id"]
    assert url == f"https://{nid}.nb.localhost:{ENV['CADDY_HTTPS_PORT']}/notebooks/{nid}/"
    STATE.update(id=nid, url=url)
    k = kernel(user, url)
    try:
        out = k.execute(
            "print(open('/workspace/data/data.csv').read(), open('/workspace/repo/README.md').read());"
            "open('/workspace/notes.txt', 'w').write('kept')"
        )
    finally:
        k.close()
    assert "x,y\n1,2" in out and "from git" in out
    # The platform's origin does not serve the notebook (its own origin only).
    reply = requests.get(
        f"{URL}/notebooks/{nid}/api/kernels",
        headers={"Authorization": f"Bearer {user['token']}"},
        verify=user["ca"],
        timeout=30,
    )
    assert reply.status_code != 200 or "application/json" not in reply.headers.get(
        "Content-Type", ""
    )


def test_logs_stop_and_usage(user):
    nid = STATE["id"]
    logs = nbc(user, "notebook", "logs", nid)
    assert "Jupyter" in logs or "jupyter" in logs, logs[-2000:]
    got = nbc_json(user, "notebook", "get", nid)
    STATE["first_host"] = host_of(nid)
    assert got["status"]["state"] == "RUNNING"
    nbc(user, "notebook", "stop", nid, "--wait", "--timeout", "300")
    assert nbc_json(user, "notebook", "get", nid)["status"]["state"] == "STOPPED"
    usage = nbc(user, "usage", "--group-by", "notebook", "--csv")
    assert "smoke" in usage or nid in usage, usage


def host_of(notebook_id: str) -> str:
    """The host a notebook runs on, as an operator sees it (its container's label)."""
    names = subprocess.run(
        [
            "docker",
            "ps",
            "--filter",
            f"label=io.nbcloud.notebook={notebook_id}",
            "--format",
            '{{.Label "io.nbcloud.host"}}',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(names) == 1, names
    return names[0]


def test_drain_the_first_host_and_start_again_on_the_other(user):
    nid, first = STATE["id"], STATE["first_host"]
    assert "DRAINING" in manage("host", "drain", first)
    try:
        started = nbc_json(user, "notebook", "start", nid, "--wait", "--timeout", "300")
        assert started["status"]["state"] == "RUNNING"
        second = host_of(nid)
        assert {first, second} == {"cpu-1", "cpu-2"}
        STATE["second_host"] = second
        k = kernel(user, started["status"]["url"])
        try:
            # The workspace came back from object storage onto the other machine.
            assert k.execute("print(open('/workspace/notes.txt').read())").strip() == "kept"
        finally:
            k.close()
    finally:
        manage("host", "undrain", first)


def test_restarting_web_and_the_workers_loses_nothing(user):
    nid = STATE["id"]
    before = nbc_json(user, "notebook", "list")
    stack("main", "restart", "web", "worker-control", "worker-cpu-1", "beat")
    stack("host", "restart")
    wait_for(
        lambda: requests.get(f"{URL}/api/v1/schema/", verify=user["ca"], timeout=10).ok,
        timeout=120,
        what="web answering through Caddy after its restart",
    )
    after = nbc_json(user, "notebook", "list")
    assert [(n["id"], n["status"]["state"]) for n in after] == [
        (n["id"], n["status"]["state"]) for n in before
    ]
    assert (nid, "RUNNING") in [(n["id"], n["status"]["state"]) for n in after]
    assert "lake" in nbc(user, "datastore", "list")
    # The editor kept running through its worker's restart; the gateway reaches it again
    # once the restarted worker has taken it over (the editor's port is forwarded anew).
    headers = {"Authorization": f"Bearer {user['token']}"}
    wait_for(
        lambda: requests.get(STATE["url"] + "api/kernels", headers=headers, timeout=10).ok,
        timeout=120,
        what="the running editor answering through the gateway again",
    )
    k = kernel(user, STATE["url"])
    try:
        assert k.execute("print(1 + 1)").strip() == "2"
    finally:
        k.close()


def test_delete(user):
    nid = STATE["id"]
    nbc(user, "notebook", "delete", nid, "--force")
    wait_for(
        lambda: all(n["id"] != nid for n in nbc_json(user, "notebook", "list")),
        timeout=180,
        what="the notebook gone from the list",
    )
    wait_for(
        lambda: (
            not subprocess.run(
                ["docker", "ps", "-aq", "--filter", f"label=io.nbcloud.notebook={nid}"],
                capture_output=True,
                text=True,
            ).stdout.strip()
        ),
        timeout=120,
        what="its container removed",
    )


def test_prometheus_scrapes_every_target_and_loads_the_alerts(up):
    def targets():
        reply = requests.get(f"{PROMETHEUS}/api/v1/targets", timeout=10).json()
        return reply["data"]["activeTargets"]

    def all_up():
        found = targets()
        return len(found) == 3 and all(t["health"] == "up" for t in found) and found

    found = wait_for(
        all_up,
        timeout=60,
        what=lambda: (
            "every target up: "
            + json.dumps([(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets()])
        ),
    )
    assert {t["labels"]["job"] for t in found} == {"nbcloud-web", "nbcloud-hosts"}
    rules = requests.get(f"{PROMETHEUS}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert {g["name"] for g in rules} >= {"nbcloud-platform", "nbcloud-hosts"}
    # Evaluated against the live series without errors, and none fires on a healthy stack.
    evaluated = [r for g in rules for r in g["rules"]]
    assert [
        (r["name"], r["health"], r.get("lastError")) for r in evaluated if r["health"] != "ok"
    ] == []
    assert [r["name"] for r in evaluated if r["state"] == "firing"] == []
    # The series the alerts read are there, from the running platform.
    query = requests.get(
        f"{PROMETHEUS}/api/v1/query", params={"query": "nbcloud_database_up"}, timeout=10
    ).json()["data"]["result"]
    assert [r["value"][1] for r in query] == ["1"]
