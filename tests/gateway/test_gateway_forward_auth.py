"""The front-proxy endpoint (nginx auth_request, Caddy forward_auth) and
per-notebook origins: both ask the same `authorize` as the ASGI gateway."""

from urllib.parse import urlsplit

import pytest

from nbcloud.gateway import routing
from nbcloud.notebooks.models import Notebook
from support.factories import make_notebook

pytestmark = pytest.mark.django_db

PROXY_TOKEN = "front-proxy-secret"


@pytest.fixture(autouse=True)
def _proxy_token(settings):
    settings.NBCLOUD_GATEWAY_PROXY_TOKEN = PROXY_TOKEN


@pytest.fixture
def running(alpha):
    return make_notebook(
        alpha,
        state="RUNNING",
        editor_secret="s3cret",
        editor_url="http://127.0.0.1:40000",
        labels={"team": "vision"},
    )


def _ask(client, notebook, path="api/status", proxy_token=PROXY_TOKEN, **headers):
    if proxy_token is not None:
        headers["x_nbcloud_proxy_token"] = proxy_token
    # The front proxy forwards the host the browser asked: the notebook's own origin.
    headers.setdefault("x_forwarded_host", urlsplit(routing.origin(notebook.pk)).netloc)
    return client.get(
        "/gateway/auth/",
        HTTP_X_ORIGINAL_URI=f"/notebooks/{notebook.pk}/{path}",
        **{f"HTTP_{k.upper()}": v for k, v in headers.items()},
    )


def test_forward_auth_answers_only_the_platform_proxy(client, running, alice, settings):
    member = {"authorization": f"Bearer {alice[1]}"}
    for proxy_token in [None, "", "guessed"]:
        reply = _ask(client, running, proxy_token=proxy_token, **member)
        assert reply.status_code == 403, reply.content
        assert "NBCLOUD_GATEWAY_PROXY_TOKEN" in reply.json()["message"]
        assert "s3cret" not in reply.content.decode() + str(dict(reply.headers))
    settings.NBCLOUD_GATEWAY_PROXY_TOKEN = ""
    off = _ask(client, running, **member)
    assert off.status_code == 403
    assert "Forward auth is off: set NBCLOUD_GATEWAY_PROXY_TOKEN" in off.json()["message"]


def test_forward_auth_holds_a_read_token_to_looking(client, running, bob):
    reader = {"authorization": f"Bearer {bob[1]}"}
    assert _ask(client, running, **reader).status_code == 200
    for method in ["POST", "PUT", "PATCH", "DELETE"]:
        refused = _ask(client, running, path="api/kernels", x_original_method=method, **reader)
        assert refused.status_code == 403, method
        assert "X-Nbcloud-Editor-Authorization" not in refused
    channels = _ask(client, running, path="api/kernels/k/channels", upgrade="websocket", **reader)
    assert channels.status_code == 403
    assert "X-Nbcloud-Editor-Authorization" not in channels


def test_forward_auth_admits_a_member_token_with_the_editor_credentials(client, running, alice):
    reply = _ask(client, running, authorization=f"Bearer {alice[1]}")
    assert reply.status_code == 200
    assert reply["X-Nbcloud-Upstream"] == "http://127.0.0.1:40000"
    assert reply["X-Nbcloud-Editor-Authorization"] == "token s3cret"


def test_forward_auth_refuses_like_the_gateway(client, running, charlie):
    assert _ask(client, running).status_code == 401
    assert _ask(client, running, authorization=f"Bearer {charlie[1]}").status_code == 404
    assert _ask(client, running, authorization="Bearer nbc_wrong").status_code == 401
    not_a_notebook = client.get(
        "/gateway/auth/", HTTP_X_ORIGINAL_URI="/admin/", HTTP_X_NBCLOUD_PROXY_TOKEN=PROXY_TOKEN
    )
    assert not_a_notebook.status_code == 404


def test_forward_auth_gives_vscode_its_session_cookie(client, running, alice):
    Notebook.objects.filter(pk=running.pk).update(editor_id="vscode")
    reply = _ask(client, running, authorization=f"Bearer {alice[1]}")
    assert reply.status_code == 200
    assert reply["X-Nbcloud-Editor-Cookie"].startswith("code-server-session=")
    assert "s3cret" not in reply["X-Nbcloud-Editor-Cookie"]


def test_per_notebook_origins(settings, running, alice, client):
    settings.NBCLOUD_PUBLIC_URL = "https://nb.example.org"
    settings.NBCLOUD_NOTEBOOK_DOMAIN = "nb.example.org"
    own = f"{running.pk}.nb.example.org"
    assert routing.public_url(running.pk) == f"https://{own}/notebooks/{running.pk}/"
    assert routing.host_allowed(str(running.pk), own)
    assert not routing.host_allowed(str(running.pk), "other.nb.example.org")
    # A notebook asked for on another notebook's origin does not exist there.
    wrong_host = _ask(
        client,
        running,
        authorization=f"Bearer {alice[1]}",
        x_forwarded_host="00000000-0000-0000-0000-000000000000.nb.example.org",
    )
    assert wrong_host.status_code == 404
    right_host = _ask(client, running, authorization=f"Bearer {alice[1]}", x_forwarded_host=own)
    assert right_host.status_code == 200


def test_forward_auth_starts_the_hand_off_for_a_browser(client, running):
    reply = _ask(client, running, path="lab", accept="text/html")
    assert reply.status_code == 302
    location = urlsplit(reply["Location"])
    assert location.path == "/gateway/handoff/"
    assert f"notebook={running.pk}" in location.query
    assert reply["Set-Cookie"].startswith("nbcloud_handoff_state=")
    assert "HttpOnly" in reply["Set-Cookie"] and "Domain" not in reply["Set-Cookie"]


def test_the_platform_origin_sends_browsers_to_the_notebooks_own(client, running, alice):
    on_platform = _ask(
        client, running, path="lab", accept="text/html", x_forwarded_host="127.0.0.1:8000"
    )
    assert on_platform.status_code == 302
    assert on_platform["Location"] == f"{routing.origin(running.pk)}/notebooks/{running.pk}/lab"
    api = _ask(
        client,
        running,
        authorization=f"Bearer {alice[1]}",
        x_forwarded_host="127.0.0.1:8000",
    )
    assert api.status_code == 404
