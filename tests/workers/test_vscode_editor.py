"""The vscode editor: a real code-server, sandboxed by the process runtime,
served under the notebook's base path, reached directly and through the gateway.

The tests that run code-server need it installed: the `code_server` fixture
installs it once per machine, as `manage.py installcodeserver` does (cached
under NBCLOUD_CODE_SERVER_DIR, outside the checkout); later runs find it there.
"""

import json
import os
import re
import struct
import uuid

import psutil
import pytest
import requests

from support.editors import notebook_url
from support.waiting import wait_for, wait_state
from workers import code_server as cs
from workers.lifecycle import wait_ready
from workers.runtimes import RUNTIMES, StartError
from workers.runtimes.editors import code_server_session, editor_command

pytestmark = pytest.mark.e2e

COOKIE = "code-server-session"


@pytest.fixture
def make_spec(make_spec):
    """The shared runtime specs (support/fixtures.py), for VS Code."""
    return lambda **overrides: make_spec(**{"editor_id": "vscode", **overrides})


def _processes_of(uid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info["uids"]
        if uids and uid in (uids.real, uids.effective):
            found.append(proc)
    return found


def _is_workbench(reply: requests.Response) -> bool:
    return (
        reply.status_code == 200
        and "vscode-workbench-web-configuration" in reply.text
        and "workbench.js" in reply.text
    )


# -- installing ---------------------------------------------------------------


def test_install_is_cached_world_readable_and_marked(code_server):
    assert code_server == cs.entry_script() and code_server.is_file()
    folder = cs.install_dir()
    assert cs.is_installed(folder)
    assert not folder.is_relative_to(cs.Path(__file__).resolve().parents[2])  # not the checkout
    assert folder.stat().st_mode & 0o005 == 0o005
    assert code_server.stat().st_mode & 0o004
    assert cs.preload_script().stat().st_mode & 0o004
    rg = folder / "node_modules/code-server/lib/vscode/node_modules/@vscode/ripgrep/bin/rg"
    assert os.access(rg, os.X_OK)
    # A second call is a no-op that returns at once.
    assert cs.ensure_code_server(log=lambda m: pytest.fail(f"reinstalled: {m}")) == code_server


def test_failed_install_is_a_clear_error_and_leaves_nothing(
    code_server, settings, tmp_path, monkeypatch
):
    target = tmp_path / "code-server"
    settings.NBCLOUD_CODE_SERVER_DIR = str(target)
    monkeypatch.setattr(cs, "CODE_SERVER_VERSION", "0.0.0-no-such-version")
    with pytest.raises(cs.CodeServerInstallError, match="npm install code-server@0.0.0"):
        cs.ensure_code_server(log=lambda _: None)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_a_start_without_code_server_fails_at_once_naming_the_install_command(
    make_spec, settings, tmp_path, monkeypatch
):
    """Installing is the host's provisioning step: a user's start never runs npm or apt-get."""
    settings.NBCLOUD_CODE_SERVER_DIR = str(tmp_path / "code-server")
    settings.NBCLOUD_CODE_SERVER = ""
    monkeypatch.setattr(cs, "ensure_code_server", lambda **_: pytest.fail("installed at start"))
    with pytest.raises(StartError) as failure:
        editor_command(make_spec(), 1)
    assert "not installed" in failure.value.user_message
    assert "manage.py installcodeserver" in failure.value.user_message
    assert f"not installed in {tmp_path / 'code-server'}" in str(failure.value)
    assert "make code-server" in str(failure.value)
    assert list(tmp_path.iterdir()) == []


def test_launch_passes_the_secret_hashed_never_in_argv(make_spec, code_server):
    spec = make_spec()
    argv, env = editor_command(spec, 4321)
    assert spec.secret not in " ".join(argv)
    assert env["HASHED_PASSWORD"] == code_server_session(spec.secret) != spec.secret
    assert argv[-1] == "/workspace"
    assert argv[argv.index("--bind-addr") :][:2] == ["--bind-addr", "127.0.0.1:4321"]


def test_gateway_sends_the_session_code_server_takes_and_only_that_one():
    from nbcloud.gateway.authorize import Decision
    from nbcloud.gateway.proxy import _forwarded_headers

    decision = Decision(200, upstream="http://127.0.0.1:1", editor_id="vscode", secret="s3")
    client = {"cookie": f"{COOKIE}=forged; theme=dark", "accept": "text/html"}
    headers = dict(_forwarded_headers(client, decision, "127.0.0.1:1"))
    assert headers["cookie"] == f"theme=dark; {COOKIE}={code_server_session('s3')}"
    assert "authorization" not in headers


# -- running, directly --------------------------------------------------------


@pytest.fixture
def vscode(make_spec, code_server):
    runtime = RUNTIMES["process"](make_spec())
    runtime.start()
    yield runtime
    runtime.stop(5)


def test_code_server_serves_the_workbench_behind_its_cookie(vscode):
    wait_ready(vscode, 120)
    url = vscode.endpoint.url
    cookie = {COOKIE: code_server_session(vscode.spec.secret)}

    page = requests.get(url, cookies=cookie, timeout=10)
    assert _is_workbench(page), page.text[:500]
    # Its assets load under the base path (relative URLs).
    asset = re.search(r'src="([^"]*workbench\.js)"', page.text)[1]
    loaded = requests.get(requests.compat.urljoin(url, asset), cookies=cookie, timeout=10)
    assert loaded.status_code == 200 and len(loaded.content) > 100_000

    for refused in ({}, {COOKIE: vscode.spec.secret}, {COOKIE: "nope"}):
        reply = requests.get(url, cookies=refused, timeout=10, allow_redirects=False)
        assert reply.status_code == 302 and "login" in reply.headers["location"]
        assert not _is_workbench(requests.get(url, cookies=refused, timeout=10))
    # The bare base path (no trailing slash) is sent to the base path.
    bare = requests.get(url.rstrip("/"), cookies=cookie, timeout=10, allow_redirects=False)
    assert bare.status_code == 302 and bare.headers["location"] == vscode.spec.base_url


def test_code_server_runs_sandboxed_and_stop_leaves_nothing(vscode):
    wait_ready(vscode, 120)
    uid = vscode.spec.uid
    mine = _processes_of(uid)
    assert mine, "code-server should run as the notebook's own uid"
    assert all(p.uids().real == uid for p in mine)
    assert (vscode.spec.workspace / ".local/share/code-server").is_dir()
    assert vscode.stats()["running"] is True
    vscode.stop(5)
    assert vscode.poll() is not None
    wait_for(lambda: not _processes_of(uid), timeout=10, what="no process of the notebook's uid")


# -- end to end, through the gateway -----------------------------------------

SPEC = {
    "name": "code",
    "env": {"framework_id": "conda", "editor_id": "vscode"},
    "resources": {"cpu": 1},
}


def _vscode_frame(kind: int, payload: bytes) -> bytes:
    """One VS Code remote-protocol message: type, id, ack, length, then data."""
    return struct.pack(">BIII", kind, 1, 0, len(payload)) + payload


@pytest.mark.django_db(transaction=True)
def test_vscode_notebook_through_the_gateway(
    code_server, platform_server, celery_worker_process, conda_env, this_host, alice_api, alice
):
    import websocket

    from nbcloud.notebooks.models import Notebook
    from workers.lifecycle import runtime_for

    created = alice_api.post("/api/v1/projects/alpha/notebooks/", SPEC, format="json")
    assert created.status_code == 201, created.content
    notebook_id = created.json()["id"]
    url = f"/api/v1/projects/alpha/notebooks/{notebook_id}/"

    try:
        running = wait_state(alice_api, url, "RUNNING", timeout=180)
        page_url = running["url"]
        assert page_url == notebook_url(platform_server, notebook_id)
        bearer = {"Authorization": f"Bearer {alice[1]}"}

        page = requests.get(page_url, headers=bearer, timeout=10)
        assert _is_workbench(page), page.text[:500]
        asset = re.search(r'src="([^"]*workbench\.js)"', page.text)[1]
        loaded = requests.get(requests.compat.urljoin(page_url, asset), headers=bearer, timeout=30)
        assert loaded.status_code == 200 and len(loaded.content) > 100_000
        # Without the platform's credentials the gateway refuses.
        assert requests.get(page_url, timeout=10).status_code in (302, 401)
        # The editor's own port refuses whoever lacks its cookie.
        editor = Notebook.objects.get(pk=notebook_id).editor_url
        direct = requests.get(
            f"{editor}/notebooks/{notebook_id}/", timeout=10, allow_redirects=False
        )
        assert direct.status_code == 302 and "login" in direct.headers["location"]

        # The workbench's remote connection: a websocket at the base path, through
        # the gateway; the server answers the client's first (auth) message.
        token = str(uuid.uuid4())
        ws_url = page_url.replace("http", "ws", 1) + (
            f"?reconnectionToken={token}&reconnection=false&skipWebSocketFrames=false"
        )
        ws = websocket.create_connection(ws_url, header=[f"Authorization: Bearer {alice[1]}"])
        try:
            ws.settimeout(20)
            auth = b'{"type":"auth","auth":"00000000000000000000","data":""}'
            ws.send_binary(_vscode_frame(2, auth))  # ProtocolMessageType.Control
            for _ in range(10):  # skipping keep-alives
                reply = ws.recv()
                assert isinstance(reply, bytes) and len(reply) >= 13, reply
                if reply[0] == 2:
                    break
            assert json.loads(reply[13:])["type"] == "sign", reply
        finally:
            ws.close()

        assert alice_api.post(url + "stop/").status_code == 202
        stopped = wait_state(alice_api, url, "STOPPED", timeout=90)
        assert stopped["workspace_size"] > 0
        with pytest.raises(requests.ConnectionError):
            requests.get(direct.url, timeout=5)
    finally:
        notebook = Notebook.objects.filter(pk=notebook_id).first()
        if notebook is not None and notebook.runtime_state:
            runtime_for(notebook).stop(5)
