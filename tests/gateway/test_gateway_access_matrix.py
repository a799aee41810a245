"""Who may reach a notebook, cell by cell: callers x notebooks x actions.

The callers are the owner signed in to the platform (a Django session), the
project's operator and read tokens, a label-scoped token whose selector
matches the notebooks and one whose selector does not, a member of another
project, and nobody. The notebooks are a restricted one and an open one
(`unsecure_http`). The actions are the API's get and stop, and an HTTP request
and a WebSocket through the gateway to a real JupyterLab behind it.

The API is never open; the gateway lets anyone into an open notebook.
"""

import os
import re
import secrets
import shutil
import uuid
from dataclasses import dataclass
from urllib.parse import quote

import pytest
import requests
import websocket
from django.conf import settings
from django.test import Client
from rest_framework.test import APIClient

from nbcloud.hosts.models import Host
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import State
from nbcloud.projects.models import ApiToken, Role
from workers.lifecycle import wait_ready
from workers.runtimes import RUNTIMES, LaunchSpec

pytestmark = pytest.mark.e2e

CALLERS = [
    "owner session",
    "operator token",
    "read token",
    "scoped token, matching",
    "scoped token, not matching",
    "other project",
    "anonymous",
]
NOTEBOOKS = ["restricted", "open"]
ENTERS = {"http": 200, "ws": "open"}

# Expected answers; the API's are the same for both notebooks.
API_EXPECTED = {
    "owner session": {"get": 200, "stop": 202},
    "operator token": {"get": 200, "stop": 202},
    "read token": {"get": 200, "stop": 403},
    "scoped token, matching": {"get": 200, "stop": 202},
    "scoped token, not matching": {"get": 404, "stop": 404},
    "other project": {"get": 404, "stop": 404},
    "anonymous": {"get": 401, "stop": 401},
}
GATEWAY_EXPECTED = {
    "restricted": {
        "owner session": ENTERS,
        "operator token": ENTERS,
        "read token": {"http": 200, "ws": "refused (403)"},
        "scoped token, matching": ENTERS,
        "scoped token, not matching": {"http": 404, "ws": "refused"},
        "other project": {"http": 404, "ws": "refused"},
        "anonymous": {"http": 401, "ws": "refused"},
    },
    "open": dict.fromkeys(CALLERS, ENTERS),
}


# The editors: one real JupyterLab per notebook, for the whole module.


@dataclass
class Editor:
    id: str
    secret: str
    runtime: object

    @property
    def origin(self) -> str:
        return self.runtime.endpoint.origin


@pytest.fixture(scope="module")
def editors(conda_env):
    # Not under /tmp: the sandbox has a private /tmp of its own.
    base = settings.DATA_DIR / f"gw-matrix-{uuid.uuid4().hex[:8]}"
    base.mkdir(mode=0o711)
    started: dict[str, Editor] = {}
    try:
        for kind in NOTEBOOKS:
            notebook_id = str(uuid.uuid4())
            uid = 230000 + int(notebook_id[:4], 16)
            workspace = base / f"ws-{uid}"
            workspace.mkdir(mode=0o700)
            os.chown(workspace, uid, uid)
            spec = LaunchSpec(
                notebook_id=notebook_id,
                editor_id="jupyterlab",
                env_dir=conda_env,
                workspace=workspace,
                uid=uid,
                secret=secrets.token_hex(24),
                base_url=f"/notebooks/{notebook_id}/",
            )
            runtime = RUNTIMES["process"](spec)
            runtime.start()
            started[kind] = Editor(notebook_id, spec.secret, runtime)
        for editor in started.values():
            wait_ready(editor.runtime, 90)
        yield started
    finally:
        for editor in started.values():
            editor.runtime.stop(5)
        shutil.rmtree(base, ignore_errors=True)


def _make_notebook(alpha, *, name, unsecure_http, base_url, editor=None, host=None, **fields):
    notebook_id = editor.id if editor else str(uuid.uuid4())
    return Notebook.objects.create(
        id=notebook_id,
        project=alpha,
        name=name,
        framework_id="conda",
        framework_version="py311",
        editor_id="jupyterlab",
        flavor="ai1-1-cpu",
        cpu=1,
        region="GRA",
        labels={"team": "vision"},
        unsecure_http=unsecure_http,
        state=fields.pop("state", State.RUNNING),
        host=host,
        editor_secret=editor.secret if editor else secrets.token_hex(24),
        url=f"{base_url}/notebooks/{notebook_id}/",
        editor_url=editor.origin if editor else "",
        **fields,
    )


def _scoped_tokens(alpha, alice_user) -> tuple[str, str]:
    _, matching = ApiToken.issue(
        project=alpha,
        user=alice_user,
        role=Role.OPERATOR,
        name="vision",
        label_selector="team=vision",
    )
    _, not_matching = ApiToken.issue(
        project=alpha, user=alice_user, role=Role.OPERATOR, name="nlp", label_selector="team=nlp"
    )
    return matching, not_matching


def _report(title: str, wrong: list[str], table: list[str]) -> str:
    return (
        f"{title}: {len(wrong)} wrong cell(s):\n  "
        + "\n  ".join(wrong)
        + ("\nall cells (caller | notebook | action: got / expected):\n  " + "\n  ".join(table))
    )


# The API: in process, on-commit tasks captured so none reaches a broker.


@pytest.mark.django_db
def test_api_access_matrix(alpha, alice, bob, charlie, django_capture_on_commit_callbacks):
    alice_user, alice_token = alice
    host = Host.objects.create(
        name="gw-matrix-host", region="GRA", cpus=8, memory_bytes=2**34, disk_bytes=2**40
    )
    notebooks = {
        "restricted": _make_notebook(
            alpha, name="restricted", unsecure_http=False, base_url="http://x", host=host
        ),
        "open": _make_notebook(
            alpha, name="open", unsecure_http=True, base_url="http://x", host=host
        ),
    }
    matching, not_matching = _scoped_tokens(alpha, alice_user)
    session = APIClient()
    session.force_login(alice_user)
    clients = {"owner session": session, "anonymous": APIClient()}
    for caller, value in [
        ("operator token", alice_token),
        ("read token", bob[1]),
        ("scoped token, matching", matching),
        ("scoped token, not matching", not_matching),
        ("other project", charlie[1]),
    ]:
        clients[caller] = APIClient()
        clients[caller].credentials(HTTP_AUTHORIZATION=f"Bearer {value}")

    got: dict[tuple[str, str, str], int] = {}
    for kind, notebook in notebooks.items():
        url = f"/api/v1/projects/alpha/notebooks/{notebook.pk}/"
        for caller in CALLERS:
            got[caller, kind, "get"] = clients[caller].get(url).status_code
        # Stops last: each successful one is undone, so the next caller meets RUNNING.
        for caller in CALLERS:
            with django_capture_on_commit_callbacks(execute=False):
                got[caller, kind, "stop"] = clients[caller].post(url + "stop/").status_code
            Notebook.objects.filter(pk=notebook.pk).update(state=State.RUNNING)

    wrong, table = [], []
    for (caller, kind, action), status in got.items():
        expected = API_EXPECTED[caller][action]
        line = f"{caller} | {kind} | API {action}: {status} / {expected}"
        table.append(line)
        if status != expected:
            wrong.append(line)
    assert not wrong, _report("API matrix", wrong, table)
    assert len(table) == len(CALLERS) * len(NOTEBOOKS) * 2


# The gateway: through the live platform server, to real editors.


@pytest.fixture
def gateway(platform_server, editors, alpha, alice, bob, charlie):
    """The two notebooks of the matrix, and each caller's headers for the live server."""
    alice_user, alice_token = alice
    notebooks = {
        kind: _make_notebook(
            alpha,
            name=kind,
            unsecure_http=kind == "open",
            base_url=platform_server,
            editor=editors[kind],
        )
        for kind in NOTEBOOKS
    }
    matching, not_matching = _scoped_tokens(alpha, alice_user)
    browser = Client()
    browser.force_login(alice_user)
    session_id = browser.cookies[settings.SESSION_COOKIE_NAME].value
    callers = {
        "owner session": {
            "Cookie": f"{settings.SESSION_COOKIE_NAME}={session_id}",
            "Origin": platform_server,
        },
        "anonymous": {},
    }
    for caller, value in [
        ("operator token", alice_token),
        ("read token", bob[1]),
        ("scoped token, matching", matching),
        ("scoped token, not matching", not_matching),
        ("other project", charlie[1]),
    ]:
        callers[caller] = {"Authorization": f"Bearer {value}"}
    return notebooks, callers


def _ws_url(http_url: str) -> str:
    return http_url.replace("http://", "ws://", 1)


def _ws_connect(url: str, headers: dict[str, str]):
    """Open a WebSocket; returns (outcome, handshake headers)."""
    header = [f"{k}: {v}" for k, v in headers.items() if k != "Origin"]
    options = {"origin": headers["Origin"]} if "Origin" in headers else {"suppress_origin": True}
    try:
        ws = websocket.create_connection(url, header=header, timeout=10, **options)
    except websocket.WebSocketBadStatusException as refused:
        return f"refused ({refused.status_code})", refused.resp_headers or {}
    handshake = ws.getheaders() or {}
    ws.close()
    return "open", handshake


def _leaks(secret: str, responses) -> list[str]:
    found = []
    for label, headers, body in responses:
        if secret in body or any(secret in f"{k}: {v}" for k, v in dict(headers).items()):
            found.append(label)
    return found


@pytest.mark.django_db(transaction=True)
def test_gateway_access_matrix(gateway, editors):
    notebooks, callers = gateway
    wrong, table, seen = [], [], []
    for kind, notebook in notebooks.items():
        for caller in CALLERS:
            headers = callers[caller]
            reply = requests.get(
                f"{notebook.url}api/status", headers=headers, timeout=10, allow_redirects=False
            )
            outcome, handshake = _ws_connect(
                _ws_url(f"{notebook.url}api/events/subscribe"), headers
            )
            seen.append((f"{caller} {kind} http", reply.headers, reply.text))
            seen.append((f"{caller} {kind} ws", handshake, ""))
            expected = GATEWAY_EXPECTED[kind][caller]
            for action, status, want in [
                ("HTTP", reply.status_code, expected["http"]),
                ("WS", outcome, expected["ws"]),
            ]:
                line = f"{caller} | {kind} | gateway {action}: {status} / {want}"
                table.append(line)
                if not str(status).startswith(str(want)):
                    wrong.append(line)
            if reply.status_code == 200:
                assert reply.json().get("started"), reply.text  # JupyterLab's own answer
    assert not wrong, _report("gateway matrix", wrong, table)
    assert len(table) == len(CALLERS) * len(NOTEBOOKS) * 2
    for kind in notebooks:
        leaked = _leaks(editors[kind].secret, seen)
        assert not leaked, f"the {kind} editor's secret reached the client in: {leaked}"


# Focused checks, through the live server.


@pytest.mark.django_db(transaction=True)
def test_platform_credentials_never_reach_the_editor(gateway, editors, alice):
    notebooks, _ = gateway
    notebook = notebooks["restricted"]
    bearer = {"Authorization": f"Bearer {alice[1]}"}
    through = requests.get(f"{notebook.url}api/status", headers=bearer, timeout=10)
    assert through.status_code == 200, through.text
    # The editor itself knows nothing of platform tokens: only the gateway's
    # secret opens it, and the gateway sends that instead of the caller's token.
    direct = f"{editors['restricted'].origin}/notebooks/{notebook.pk}/api/status"
    assert requests.get(direct, headers=bearer, timeout=10).status_code == 403
    as_jupyter = {"Authorization": f"token {alice[1]}"}
    assert requests.get(direct, headers=as_jupyter, timeout=10).status_code == 403
    secret = {"Authorization": f"token {editors['restricted'].secret}"}
    assert requests.get(direct, headers=secret, timeout=10).status_code == 200
    assert editors["restricted"].secret not in through.text
    assert not any(editors["restricted"].secret in v for v in through.headers.values())


@pytest.mark.django_db(transaction=True)
def test_cookie_authenticated_changes_and_websockets_must_be_same_origin(gateway, platform_server):
    notebooks, callers = gateway
    notebook = notebooks["restricted"]
    cookie = {"Cookie": callers["owner session"]["Cookie"]}
    url = f"{notebook.url}api/contents"
    body = {"type": "notebook"}

    no_origin = requests.post(url, headers=cookie, json=body, timeout=10)
    assert no_origin.status_code == 403, no_origin.text
    evil = {**cookie, "Origin": "http://evil.example"}
    assert requests.post(url, headers=evil, json=body, timeout=10).status_code == 403
    # The same change from the notebook's own origin goes through.
    same = requests.post(url, headers={**cookie, "Origin": platform_server}, json=body, timeout=10)
    assert same.status_code == 201, same.text

    events = _ws_url(f"{notebook.url}api/events/subscribe")
    assert _ws_connect(events, cookie)[0] == "refused (403)"
    assert _ws_connect(events, evil)[0] == "refused (403)"
    assert _ws_connect(events, {**cookie, "Origin": platform_server})[0] == "open"
    # A bearer token is no ambient credential: no Origin needed.
    bearer = {"Authorization": callers["operator token"]["Authorization"]}
    assert requests.post(url, headers=bearer, json=body, timeout=10).status_code == 201


def _csrf(page: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match, page
    return match[1]


@pytest.mark.django_db(transaction=True)
def test_token_login_page_trades_a_token_for_a_cookie(gateway, platform_server, alpha, alice):
    notebooks, _ = gateway
    notebook = notebooks["restricted"]
    token, value = ApiToken.issue(project=alpha, user=alice[0], role=Role.READ, name="browser")
    status_path = f"/notebooks/{notebook.pk}/api/status"
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}

    # An unauthenticated browser is sent to the login page, which sends it back.
    anonymous = requests.get(
        platform_server + status_path, headers=html, timeout=10, allow_redirects=False
    )
    assert anonymous.status_code == 302, anonymous.text
    login_url = f"{platform_server}/gateway/login/?next={quote(status_path)}"
    assert anonymous.headers["Location"] == login_url

    browser = requests.Session()
    page = browser.get(login_url, timeout=10)
    assert page.status_code == 200
    assert '<form method="post">' in page.text and 'name="token"' in page.text
    csrf = _csrf(page.text)

    wrong = browser.post(
        login_url,
        data={"csrfmiddlewaretoken": csrf, "token": "nbc_not-a-token", "next": status_path},
        timeout=10,
        allow_redirects=False,
    )
    assert wrong.status_code == 401
    assert "Unknown API token" in wrong.text
    assert "nbcloud_gateway" not in browser.cookies

    right = browser.post(
        login_url,
        data={"csrfmiddlewaretoken": _csrf(wrong.text), "token": value, "next": status_path},
        timeout=10,
        allow_redirects=False,
    )
    assert right.status_code == 302, right.text
    assert right.headers["Location"] == status_path
    set_cookies = right.raw.headers.getlist("Set-Cookie")
    gateway_cookie = [c for c in set_cookies if c.startswith("nbcloud_gateway=")]
    assert len(gateway_cookie) == 1, set_cookies
    assert "httponly" in gateway_cookie[0].lower()
    assert value not in gateway_cookie[0]  # signed reference, not the token itself

    opened = browser.get(platform_server + status_path, headers=html, timeout=10)
    assert opened.status_code == 200, opened.text
    assert opened.url == platform_server + status_path  # no detour through the login page
    assert opened.json()["started"]
    # A cookie is an ambient credential: changes need the notebook's own origin.
    contents = f"{notebook.url}api/contents"
    assert browser.post(contents, json={"type": "file"}, timeout=10).status_code == 403

    # Renewing the token retires the cookie traded for it.
    token.renew()
    stale = browser.get(
        platform_server + status_path, headers=html, timeout=10, allow_redirects=False
    )
    assert stale.status_code == 302 and stale.headers["Location"] == login_url
    api_style = browser.get(platform_server + status_path, timeout=10, allow_redirects=False)
    assert api_style.status_code == 401


@pytest.mark.django_db(transaction=True)
def test_cookie_of_a_disabled_user_opens_nothing(gateway, platform_server, alpha, alice):
    notebooks, _ = gateway
    notebook = notebooks["restricted"]
    _, value = ApiToken.issue(project=alpha, user=alice[0], role=Role.READ, name="leaver")
    login_url = f"{platform_server}/gateway/login/"
    browser = requests.Session()
    csrf = _csrf(browser.get(login_url, timeout=10).text)
    traded = browser.post(
        login_url, data={"csrfmiddlewaretoken": csrf, "token": value}, allow_redirects=False
    )
    assert traded.status_code == 302
    status = f"{notebook.url}api/status"
    assert browser.get(status, timeout=10).status_code == 200
    alice[0].is_active = False
    alice[0].save(update_fields=["is_active"])
    # As with the token itself (Bearer), whose user is disabled.
    assert browser.get(status, timeout=10).status_code == 401
    bearer = {"Authorization": f"Bearer {value}"}
    assert requests.get(status, headers=bearer, timeout=10).status_code == 401


@pytest.mark.django_db(transaction=True)
def test_stopped_notebook_answers_503(gateway, editors, alpha, alice, platform_server):
    # Its editor_url names a live editor: were the gateway to go there, the
    # answer would be JupyterLab's, not 503.
    stopped = _make_notebook(
        alpha, name="stopped", unsecure_http=False, base_url=platform_server, state=State.STOPPED
    )
    Notebook.objects.filter(pk=stopped.pk).update(editor_url=editors["restricted"].origin)
    bearer = {"Authorization": f"Bearer {alice[1]}"}
    reply = requests.get(f"{stopped.url}api/status", headers=bearer, timeout=10)
    assert reply.status_code == 503, reply.text
    assert reply.json()["code"] == "not_running"
    assert "STOPPED" in reply.json()["message"]
    assert _ws_connect(_ws_url(f"{stopped.url}api/events/subscribe"), bearer)[0].startswith(
        "refused"
    )
    # Nobody learns more than "no such notebook" without a right to it.
    assert requests.get(f"{stopped.url}api/status", timeout=10).status_code == 401


@pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"),
    reason="drops the server's PostgreSQL connections",
)
@pytest.mark.django_db(transaction=True)
def test_gateway_recovers_when_its_database_connection_drops(gateway, alice):
    """A database restart costs a request, not every request until the platform restarts."""
    from django.db import connection

    notebooks, _ = gateway
    status = f"{notebooks['restricted'].url}api/status"
    bearer = {"Authorization": f"Bearer {alice[1]}"}
    assert requests.get(status, headers=bearer, timeout=10).status_code == 200
    with connection.cursor() as cursor:
        # The live server's connections: the ones that looked tokens up last.
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND query ILIKE %s",
            ["%projects_apitoken%"],
        )
        assert cursor.fetchall(), "no server connection found to drop"
    codes = [requests.get(status, headers=bearer, timeout=10).status_code for _ in range(4)]
    # The first request may meet the dead connection; the next ones must not.
    assert codes[1:] == [200, 200, 200], codes
