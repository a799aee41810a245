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
from urllib.parse import parse_qs, urlsplit

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
from support.editors import notebook_url
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
            uid = settings.NBCLOUD_SANDBOX_UID_BASE + 3_300_000 + int(notebook_id[:4], 16)
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
        url=notebook_url(base_url, notebook_id)
        if urlsplit(base_url).port
        else f"{base_url}/notebooks/{notebook_id}/",
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
        # (Its Origin is each notebook's own: _headers_for.)
        "owner session": {
            "Cookie": f"{settings.SESSION_COOKIE_NAME}={session_id}",
            "Origin": "",
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


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _headers_for(headers: dict[str, str], notebook) -> dict[str, str]:
    """A caller's headers for one notebook: a browser's Origin is the page's, the notebook's."""
    if "Origin" in headers:
        return {**headers, "Origin": _origin(notebook.url)}
    return headers


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
            headers = _headers_for(callers[caller], notebook)
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
def test_changes_and_websockets_must_come_from_the_notebooks_own_origin(gateway, platform_server):
    notebooks, callers = gateway
    notebook = notebooks["restricted"]
    own = _origin(notebook.url)
    other = _origin(notebooks["open"].url)  # another notebook's origin
    cookie = {"Cookie": callers["owner session"]["Cookie"]}
    url = f"{notebook.url}api/contents"
    body = {"type": "notebook"}

    no_origin = requests.post(url, headers=cookie, json=body, timeout=10)
    assert no_origin.status_code == 403, no_origin.text
    for foreign in ["http://evil.example", platform_server, other]:
        refused = requests.post(url, headers={**cookie, "Origin": foreign}, json=body, timeout=10)
        assert refused.status_code == 403, (foreign, refused.text)
        assert own in refused.json()["message"]
    # The same change from the notebook's own origin goes through.
    same = requests.post(url, headers={**cookie, "Origin": own}, json=body, timeout=10)
    assert same.status_code == 201, same.text

    events = _ws_url(f"{notebook.url}api/events/subscribe")
    assert _ws_connect(events, cookie)[0] == "refused (403)"
    for foreign in ["http://evil.example", platform_server, other]:
        assert _ws_connect(events, {**cookie, "Origin": foreign})[0] == "refused (403)", foreign
    assert _ws_connect(events, {**cookie, "Origin": own})[0] == "open"
    # A bearer token is no ambient credential: no Origin needed, but a page of
    # another origin holding one is still refused.
    bearer = {"Authorization": callers["operator token"]["Authorization"]}
    assert requests.post(url, headers=bearer, json=body, timeout=10).status_code == 201
    assert _ws_connect(events, bearer)[0] == "open"
    evil = {**bearer, "Origin": "http://evil.example"}
    assert requests.post(url, headers=evil, json=body, timeout=10).status_code == 403
    assert _ws_connect(events, evil)[0] == "refused (403)"


def _csrf(page: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match, page
    return match[1]


HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def _hop(browser: requests.Session, url: str, **kwargs) -> requests.Response:
    return browser.get(url, headers=HTML, timeout=10, allow_redirects=False, **kwargs)


def _sign_in(browser: requests.Session, notebook, platform_server: str, token: str):
    """A browser opens a notebook page: hand-off, token login on the platform, back.

    Returns the page's answer and the exchange URL (whose code is spent)."""
    page = f"{notebook.url}api/status"
    start = _hop(browser, page)
    assert start.status_code == 302, start.text
    handoff = start.headers["Location"]
    assert handoff.startswith(f"{platform_server}/gateway/handoff/?")
    query = parse_qs(urlsplit(handoff).query)
    assert query["notebook"] == [str(notebook.pk)]
    assert query["next"] == [urlsplit(page).path]
    assert "nbcloud_handoff_state" in start.headers["Set-Cookie"]

    to_login = _hop(browser, handoff)
    assert to_login.status_code == 302, to_login.text
    login_url = platform_server + to_login.headers["Location"]
    assert login_url.startswith(f"{platform_server}/gateway/login/?next=")
    form = browser.get(login_url, timeout=10)
    assert '<form method="post">' in form.text and 'name="token"' in form.text
    next_path = parse_qs(urlsplit(login_url).query)["next"][0]
    wrong = browser.post(
        login_url,
        data={"csrfmiddlewaretoken": _csrf(form.text), "token": "nbc_nope", "next": next_path},
        timeout=10,
        allow_redirects=False,
    )
    assert wrong.status_code == 401 and "Unknown API token" in wrong.text
    traded = browser.post(
        login_url,
        data={"csrfmiddlewaretoken": _csrf(wrong.text), "token": token, "next": next_path},
        timeout=10,
        allow_redirects=False,
    )
    assert traded.status_code == 302, traded.text
    assert platform_server + traded.headers["Location"] == handoff
    gateway_cookie = traded.headers["Set-Cookie"]
    assert gateway_cookie.startswith("nbcloud_gateway=") and token not in gateway_cookie
    assert "httponly" in gateway_cookie.lower() and "samesite=lax" in gateway_cookie.lower()
    assert "domain" not in gateway_cookie.lower()  # the platform's origin only

    code = _hop(browser, handoff)
    assert code.status_code == 302, code.text
    exchange = code.headers["Location"]
    assert exchange.startswith(f"{_origin(notebook.url)}/_nbcloud/handoff?code=")
    landed = _hop(browser, exchange)
    assert landed.status_code == 302, landed.text
    assert landed.headers["Location"] == urlsplit(page).path
    cookies = landed.headers["Set-Cookie"]
    assert "nbcloud_notebook=" in cookies and "HttpOnly" in cookies and "Domain" not in cookies
    return browser.get(page, headers=HTML, timeout=10), exchange


@pytest.mark.django_db(transaction=True)
def test_a_browser_signs_in_on_the_platform_and_is_handed_to_the_notebook(
    gateway, platform_server, alpha, alice
):
    notebooks, _ = gateway
    notebook = notebooks["restricted"]
    token, value = ApiToken.issue(project=alpha, user=alice[0], role=Role.READ, name="browser")
    browser = requests.Session()
    opened, exchange = _sign_in(browser, notebook, platform_server, value)
    assert opened.status_code == 200, opened.text
    assert opened.json()["started"]
    # The code was spent: not again, not by this browser nor another.
    again = _hop(browser, exchange)
    assert again.status_code == 403 and "already used" in again.json()["message"]
    assert _hop(requests.Session(), exchange).status_code == 403
    # A cookie is an ambient credential: changes need the notebook's own origin.
    contents = f"{notebook.url}api/contents"
    assert browser.post(contents, json={"type": "file"}, timeout=10).status_code == 403
    # The other notebook's origin knows nothing of this cookie.
    other = _hop(browser, f"{notebooks['open'].url}api/status")
    assert "nbcloud_notebook" not in other.request.headers.get("Cookie", "")

    # Signing out on the notebook's origin ends its cookie, then the platform's.
    out = _hop(browser, f"{_origin(notebook.url)}/_nbcloud/logout")
    assert out.status_code == 302
    assert out.headers["Location"] == f"{platform_server}/gateway/logout/"
    assert "nbcloud_notebook=" in out.headers["Set-Cookie"]
    assert "nbcloud_notebook" not in browser.cookies.get_dict(urlsplit(notebook.url).hostname)
    assert _hop(browser, f"{notebook.url}api/status").status_code == 302
    assert _hop(browser, out.headers["Location"]).status_code == 302  # the platform's
    assert "nbcloud_gateway" not in browser.cookies.get_dict("127.0.0.1")
    opened, _ = _sign_in(browser, notebook, platform_server, value)
    assert opened.status_code == 200

    # Renewing the token retires the cookie handed over for it.
    token.renew()
    stale = _hop(browser, f"{notebook.url}api/status")
    assert stale.status_code == 302
    assert stale.headers["Location"].startswith(f"{platform_server}/gateway/handoff/?")
    api_style = browser.get(f"{notebook.url}api/status", timeout=10, allow_redirects=False)
    assert api_style.status_code == 401


@pytest.mark.django_db(transaction=True)
def test_a_code_issued_to_one_browser_opens_nothing_in_another(
    gateway, platform_server, alpha, alice
):
    """Login CSRF: a code someone else obtained does not sign this browser in."""
    notebooks, _ = gateway
    notebook = notebooks["restricted"]
    _, value = ApiToken.issue(project=alpha, user=alice[0], role=Role.OPERATOR, name="mallory")
    mallory = requests.Session()
    start = _hop(mallory, f"{notebook.url}api/status")
    handoff = start.headers["Location"]
    login = f"{platform_server}/gateway/login/"
    csrf = _csrf(mallory.get(login, timeout=10).text)
    mallory.post(login, data={"csrfmiddlewaretoken": csrf, "token": value}, timeout=10)
    exchange = _hop(mallory, handoff).headers["Location"]
    victim = requests.Session()
    refused = _hop(victim, exchange)
    assert refused.status_code == 403, refused.text
    assert "another browser" in refused.json()["message"]
    assert "nbcloud_notebook" not in refused.headers.get("Set-Cookie", "")
    # ... and the code is spent by the attempt.
    assert _hop(mallory, exchange).status_code == 403


@pytest.mark.django_db(transaction=True)
def test_notebook_origins_answer_for_their_own_notebook_only(gateway, platform_server, alice):
    notebooks, _ = gateway
    a, b = notebooks["restricted"], notebooks["open"]
    bearer = {"Authorization": f"Bearer {alice[1]}"}
    a_path = urlsplit(a.url).path
    # Notebook A asked for on notebook B's origin does not exist there.
    on_b = requests.get(f"{_origin(b.url)}{a_path}api/status", headers=bearer, timeout=10)
    assert on_b.status_code == 404, on_b.text
    assert _ws_connect(_ws_url(f"{_origin(b.url)}{a_path}api/events/subscribe"), bearer)[
        0
    ].startswith("refused")
    # On the platform's origin: API clients are refused, browsers sent to A's own.
    on_platform = requests.get(f"{platform_server}{a_path}api/status", headers=bearer, timeout=10)
    assert on_platform.status_code == 404
    browsing = requests.get(
        f"{platform_server}{a_path}lab?reset", headers=HTML, timeout=10, allow_redirects=False
    )
    assert browsing.status_code == 302
    assert browsing.headers["Location"] == f"{_origin(a.url)}{a_path}lab?reset"
    # A notebook's origin serves the notebook and nothing of the platform.
    for path in ["/api/v1/projects/", "/admin/", "/gateway/login/", "/metrics"]:
        reply = requests.get(f"{_origin(a.url)}{path}", headers=bearer, timeout=10)
        assert reply.status_code == 404, (path, reply.text)
    root = requests.get(f"{_origin(a.url)}/", timeout=10, allow_redirects=False)
    assert root.status_code == 302 and root.headers["Location"] == a_path


@pytest.mark.django_db(transaction=True)
def test_cookie_of_a_disabled_user_opens_nothing(gateway, platform_server, alpha, alice):
    notebooks, _ = gateway
    notebook = notebooks["restricted"]
    _, value = ApiToken.issue(project=alpha, user=alice[0], role=Role.READ, name="leaver")
    browser = requests.Session()
    opened, _ = _sign_in(browser, notebook, platform_server, value)
    assert opened.status_code == 200
    status = f"{notebook.url}api/status"
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
        # None left open is fine too: the web closes its connections after each
        # request (nbcloud/asgi.py), so there is nothing stale to meet.
        cursor.fetchall()
    codes = [requests.get(status, headers=bearer, timeout=10).status_code for _ in range(4)]
    # The first request may meet the dead connection; the next ones must not.
    assert codes[1:] == [200, 200, 200], codes
