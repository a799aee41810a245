"""A `read` caller looks but never executes, through the gateway to a real JupyterLab.

One notebook started through the API (a real Celery worker, a real JupyterLab
behind the gateway). Alice's operator token runs code in a kernel; Bob's read
token and Bob signed in (a read member) may GET pages and files, but every way
to run code is refused: creating a kernel or a session, a kernel's channels
WebSocket (even to Alice's own kernel), a terminal, any unsafe method. And the
forward-auth endpoint never hands the editor's secret to a caller: only the
platform's own proxy, holding NBCLOUD_GATEWAY_PROXY_TOKEN, gets it.
"""

import json
import uuid

import pytest
import requests
import websocket

from nbcloud.notebooks.models import Notebook
from support.editors import Kernel
from support.factories import make_notebook
from support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SPEC = {
    "name": "read-role",
    "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
    "resources": {"cpu": 1},
}


@pytest.fixture
def running(platform_server, celery_worker_process, conda_env, this_host, alice_api):
    created = alice_api.post("/api/v1/projects/alpha/notebooks/", SPEC, format="json")
    assert created.status_code == 201, created.content
    notebook_id = created.json()["id"]
    api_url = f"/api/v1/projects/alpha/notebooks/{notebook_id}/"

    def is_running():
        status = alice_api.get(api_url).json()["status"]
        assert status["state"] not in ("FAILED", "DELETED"), status
        return status["state"] == "RUNNING" and status

    status = wait_for(is_running, timeout=120, what="the notebook to be RUNNING")
    yield Notebook.objects.get(pk=notebook_id), status["url"]
    from workers.lifecycle import runtime_for

    notebook = Notebook.objects.filter(pk=notebook_id).first()
    if notebook is not None and notebook.runtime_state:
        runtime_for(notebook).stop(5)


def _ws(url: str, headers: dict[str, str], origin: str | None = None) -> str:
    ws_url = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    options = {"origin": origin} if origin else {"suppress_origin": True}
    try:
        ws = websocket.create_connection(
            ws_url, header=[f"{k}: {v}" for k, v in headers.items()], timeout=15, **options
        )
    except websocket.WebSocketBadStatusException as refused:
        return f"refused ({refused.status_code})"
    ws.close()
    return "open"


def _execute_request() -> str:
    return json.dumps(
        {
            "header": {
                "msg_id": uuid.uuid4().hex,
                "msg_type": "execute_request",
                "username": "bob",
                "session": uuid.uuid4().hex,
                "version": "5.3",
            },
            "parent_header": {},
            "metadata": {},
            "channel": "shell",
            "buffers": [],
            "content": {"code": "open('/workspace/pwned', 'w')", "silent": False},
        }
    )


def test_a_read_token_looks_but_cannot_run_code(running, alice, bob):
    notebook, url = running
    operator = {"Authorization": f"Bearer {alice[1]}"}
    reader = {"Authorization": f"Bearer {bob[1]}"}

    # The operator runs code: a kernel through the gateway.
    kernel = Kernel(url, operator)
    try:
        assert kernel.execute("print(6 * 7)").strip() == "42"
        contents = requests.put(
            f"{url}api/contents/shared.txt",
            headers=operator,
            json={"type": "file", "format": "text", "content": "from alice"},
            timeout=15,
        )
        assert contents.status_code in (200, 201), contents.text

        # The reader looks: pages, the server's status, files.
        status = requests.get(f"{url}api/status", headers=reader, timeout=15)
        assert status.status_code == 200 and status.json().get("started"), status.text
        listing = requests.get(f"{url}api/contents", headers=reader, timeout=15)
        assert listing.status_code == 200, listing.text
        assert "shared.txt" in {item["name"] for item in listing.json()["content"]}
        shared = requests.get(f"{url}api/contents/shared.txt", headers=reader, timeout=15)
        assert shared.status_code == 200 and shared.json()["content"] == "from alice"
        raw = requests.get(f"{url}files/shared.txt", headers=reader, timeout=15)
        assert raw.status_code == 200 and raw.text == "from alice"
        assert (
            requests.head(f"{url}files/shared.txt", headers=reader, timeout=15).status_code == 200
        )

        # ... but runs nothing and changes nothing.
        refused = {
            "POST api/kernels": requests.post(
                f"{url}api/kernels", headers=reader, json={}, timeout=15
            ),
            "POST api/sessions": requests.post(
                f"{url}api/sessions",
                headers=reader,
                json={"path": "x.ipynb", "type": "notebook", "kernel": {"name": "python3"}},
                timeout=15,
            ),
            "POST api/terminals": requests.post(f"{url}api/terminals", headers=reader, timeout=15),
            "PUT api/contents": requests.put(
                f"{url}api/contents/bob.txt",
                headers=reader,
                json={"type": "file", "format": "text", "content": "x"},
                timeout=15,
            ),
            "PATCH api/contents": requests.patch(
                f"{url}api/contents/shared.txt", headers=reader, json={"path": "m.txt"}, timeout=15
            ),
            "DELETE api/contents": requests.delete(
                f"{url}api/contents/shared.txt", headers=reader, timeout=15
            ),
            "DELETE api/kernels": requests.delete(
                f"{url}api/kernels/{kernel.id}", headers=reader, timeout=15
            ),
        }
        wrong = {what: r.status_code for what, r in refused.items() if r.status_code != 403}
        assert not wrong, f"a read token was let through: {wrong}"
        message = refused["POST api/kernels"].json()["message"]
        assert "read" in message and "operator" in message, message

        for path in [
            f"api/kernels/{kernel.id}/channels",
            "api/events/subscribe",
            "terminals/websocket/1",
        ]:
            assert _ws(f"{url}{path}", reader) == "refused (403)", path

        # Nothing the reader sent reached the kernel or the files.
        kernels = requests.get(f"{url}api/kernels", headers=operator, timeout=15).json()
        assert [k["id"] for k in kernels] == [kernel.id]
        assert kernel.execute(
            "import os; print(sorted(f for f in os.listdir('.') if not f.startswith('.')))"
        ).strip() == repr(["shared.txt"])
        assert requests.get(f"{url}api/terminals", headers=operator, timeout=15).json() == []
    finally:
        kernel.close()
    # Pages do not carry the editor's secret (JupyterLab writes its token into them).
    direct = requests.get(
        f"{notebook.editor_url}/notebooks/{notebook.pk}/lab",
        headers={"Authorization": f"token {notebook.editor_secret}"},
        timeout=15,
    )
    assert notebook.editor_secret in direct.text  # what the gateway takes out
    for who in (reader, operator):
        lab = requests.get(f"{url}lab", headers={**who, "Accept": "text/html"}, timeout=15)
        assert lab.status_code == 200 and "jupyter-config-data" in lab.text, lab.text[:300]
        assert notebook.editor_secret not in lab.text
    # The operator's WebSockets still open (no Origin: a token is no ambient credential).
    assert _ws(f"{url}api/events/subscribe", operator) == "open"
    assert notebook.editor_secret not in status.text + listing.text


def test_a_read_member_signed_in_looks_but_cannot_run_code(running, alice, bob):
    """Bob signed in to the platform (his session) is handed to the notebook's origin."""
    from urllib.parse import urlsplit

    from django.conf import settings
    from django.test import Client

    notebook, url = running
    session = Client()
    session.force_login(bob[0])
    browser = requests.Session()
    origin = urlsplit(notebook.url)  # the notebook's own origin
    browser.cookies.set(
        settings.SESSION_COOKIE_NAME,
        session.cookies[settings.SESSION_COOKIE_NAME].value,
        domain="127.0.0.1",
    )
    html = {"Accept": "text/html,*/*;q=0.8"}
    opened = browser.get(f"{url}api/status", headers=html, timeout=15)
    assert opened.status_code == 200, opened.text
    assert [urlsplit(r.url).path for r in opened.history][1:2] == ["/gateway/handoff/"]
    assert opened.url == f"{url}api/status"
    assert "nbcloud_notebook" in browser.cookies.get_dict(domain=origin.hostname)
    own = f"{origin.scheme}://{origin.netloc}"
    same_origin = {"Origin": own}
    kernel = browser.post(f"{url}api/kernels", headers=same_origin, json={}, timeout=15)
    assert kernel.status_code == 403, kernel.text
    assert "role on this notebook is read" in kernel.json()["message"]
    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.get_dict(origin.hostname).items())
    assert _ws(f"{url}api/events/subscribe", {"Cookie": cookie}, origin=own) == "refused (403)"
    assert browser.get(f"{url}api/contents", timeout=15).status_code == 200
    # Alice's cookie-less operator token, for comparison, may.
    assert _ws(f"{url}api/events/subscribe", {"Authorization": f"Bearer {alice[1]}"}) == "open"


@pytest.mark.django_db
def test_a_read_member_with_a_grant_of_operator_may_run(alpha, bob):
    """A grant can raise a read member to operator on one notebook, never the other way."""
    from nbcloud.gateway.authorize import Caller, _caller_role
    from nbcloud.notebooks.models import NotebookGrant

    user = bob[0]
    notebook = make_notebook(alpha)
    assert _caller_role(Caller(user=user), notebook) == "read"
    NotebookGrant.objects.create(notebook=notebook, user=user, role="operator")
    assert _caller_role(Caller(user=user), notebook) == "operator"
