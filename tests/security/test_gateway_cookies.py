"""A notebook's editor cannot set the platform's cookies, nor read them.

The attack, from inside a real notebook: kernel code writes a Jupyter server
extension into the workspace (`~/.jupyter` is `/workspace/.jupyter`), the
notebook is stopped and started, and the editor now serves a page answering
`Set-Cookie: sessionid=...` and the other platform names (and a cookie for a
parent Domain, which would reach every notebook's origin). The editor itself
really sends them (asked directly); through the gateway only its harmless
cookie survives. Then headless Chromium, signed in to the platform, opens the
notebook (hand-off to its own origin) and that page: the platform's session
is untouched, and the notebook's origin never held a platform cookie.
"""

import json
import re
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.test import Client

from nbcloud.notebooks.models import Notebook
from support.editors import Kernel
from support.waiting import wait_state

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
SPEC = {
    "name": "cookie-setter",
    "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
    "resources": {"cpu": 1},
}
EVIL_COOKIES = [
    "sessionid=stolen; Path=/",
    "SessionID=stolen; Path=/",
    "csrftoken=stolen; Path=/",
    "nbcloud_gateway=stolen; Path=/",
    "nbcloud_notebook=stolen; Path=/",
    "nbcloud_handoff_state=stolen; Path=/",
    "__Host-nbcloud_notebook=stolen; Path=/; Secure",
    "tossed=1; Domain=localhost; Path=/",
]
HARMLESS = "editor_pref=dark; Path=/"
EXTENSION = f"""
import html
import json

import tornado.web

COOKIES = json.loads({json.dumps(json.dumps([*EVIL_COOKIES, HARMLESS]))})


class CookieHandler(tornado.web.RequestHandler):
    def get(self):
        for cookie in COOKIES:
            self.add_header("Set-Cookie", cookie)
        self.set_header("Content-Type", "text/html")
        seen = html.escape(self.request.headers.get("Cookie", ""))
        self.finish(f"<html><body><pre id='seen'>{{seen}}</pre></body></html>")


def _load_jupyter_server_extension(serverapp):
    base = serverapp.web_app.settings["base_url"]
    serverapp.web_app.add_handlers(".*$", [(base + "cookie-test", CookieHandler)])
"""
CONFIG = """
import sys
sys.path.insert(0, "/workspace/.cookie-ext")
c.ServerApp.jpserver_extensions.update({"cookie_ext": True})
"""
PLATFORM_NAMES = {"sessionid", "csrftoken", "nbcloud_gateway", "nbcloud_handoff_state"}


@pytest.fixture
def cookie_setter(platform_server, celery_worker_process, conda_env, this_host, alice_api, alice):
    """A running notebook whose editor loads a cookie-setting extension from its workspace."""
    created = alice_api.post("/api/v1/projects/alpha/notebooks/", SPEC, format="json")
    assert created.status_code == 201, created.content
    notebook_id = created.json()["id"]
    api_url = f"/api/v1/projects/alpha/notebooks/{notebook_id}/"
    status = wait_state(alice_api, api_url, "RUNNING", timeout=180)
    bearer = {"Authorization": f"Bearer {alice[1]}"}
    kernel = Kernel(status["url"], bearer)
    try:
        kernel.execute(
            "import os\n"
            "os.makedirs('/workspace/.cookie-ext', exist_ok=True)\n"
            "os.makedirs('/workspace/.jupyter', exist_ok=True)\n"
            f"open('/workspace/.cookie-ext/cookie_ext.py', 'w').write({EXTENSION!r})\n"
            f"open('/workspace/.jupyter/jupyter_server_config.py', 'w').write({CONFIG!r})\n"
        )
    finally:
        kernel.close()
    # Loaded at the next start.
    assert alice_api.post(api_url + "stop/").status_code == 202
    wait_state(alice_api, api_url, "STOPPED", timeout=180)
    assert alice_api.post(api_url + "start/").status_code == 202
    status = wait_state(alice_api, api_url, "RUNNING", timeout=180)
    yield Notebook.objects.get(pk=notebook_id), status["url"]
    from workers.lifecycle import runtime_for

    notebook = Notebook.objects.filter(pk=notebook_id).first()
    if notebook is not None and notebook.runtime_state:
        runtime_for(notebook).stop(5)


def _cookie_names(set_cookies: list[str]) -> set[str]:
    return {c.split("=", 1)[0].strip() for c in set_cookies}


def test_an_editor_cannot_set_or_read_the_platforms_cookies(cookie_setter, alice, platform_server):
    notebook, url = cookie_setter
    bearer = {"Authorization": f"Bearer {alice[1]}"}

    # The editor really answers them (asked directly, with its own secret) ...
    direct = requests.get(
        f"{notebook.editor_url}/notebooks/{notebook.pk}/cookie-test",
        headers={"Authorization": f"token {notebook.editor_secret}"},
        timeout=15,
    )
    assert direct.status_code == 200, direct.text
    sent = direct.raw.headers.getlist("Set-Cookie")
    assert "sessionid" in _cookie_names(sent) and len(sent) == len(EVIL_COOKIES) + 1, sent

    # ... but through the gateway only the editor's own harmless cookie survives.
    through = requests.get(f"{url}cookie-test", headers=bearer, timeout=15)
    assert through.status_code == 200, through.text
    assert through.raw.headers.getlist("Set-Cookie") == [HARMLESS]
    # And the editor never sees the caller's platform credentials.
    platform_cookies = {
        "Cookie": "sessionid=s3ssion; csrftoken=csrf; nbcloud_gateway=g; theme=light"
    }
    seen = requests.get(f"{url}cookie-test", headers={**bearer, **platform_cookies}, timeout=15)
    assert re.search(r"<pre id='seen'>(.*)</pre>", seen.text)[1] == "theme=light"

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no {CHROMIUM} for the browser half: apt-get install -y chromium")
    _browser_half(url, notebook, alice, platform_server)


def _browser_half(url: str, notebook, alice, platform_server: str) -> None:
    import shutil
    import tempfile

    from playwright.sync_api import sync_playwright

    session = Client()
    session.force_login(alice[0])
    session_id = session.cookies[settings.SESSION_COOKIE_NAME].value
    profile = tempfile.mkdtemp(prefix="nbcloud-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--no-first-run"],
            )
            try:
                # Alice is signed in to the platform (its session cookie, its origin).
                context.add_cookies(
                    [
                        {
                            "name": settings.SESSION_COOKIE_NAME,
                            "value": session_id,
                            "url": platform_server,
                            "httpOnly": True,
                            "sameSite": "Lax",
                        }
                    ]
                )
                page = context.new_page()
                page.set_default_timeout(30_000)
                # The hand-off: no login page, her session is enough.
                page.goto(f"{url}cookie-test")
                page.wait_for_url(f"{url}cookie-test")
                seen = page.locator("#seen").inner_text()
                assert not PLATFORM_NAMES & {c.split("=")[0].strip() for c in seen.split(";")}
                assert "editor_pref=dark" in page.evaluate("document.cookie")
                assert "nbcloud" not in page.evaluate("document.cookie")  # HttpOnly

                on_platform = {c["name"]: c for c in context.cookies(platform_server)}
                assert on_platform[settings.SESSION_COOKIE_NAME]["value"] == session_id
                assert "stolen" not in json.dumps(list(on_platform.values()))
                on_notebook = {c["name"]: c for c in context.cookies(url)}
                assert set(on_notebook) == {"nbcloud_notebook", "editor_pref"}, on_notebook
                own = on_notebook["nbcloud_notebook"]
                assert own["httpOnly"] and own["sameSite"] == "Lax"
                assert own["domain"] == f"{notebook.pk}.localhost"  # host-only
                assert "stolen" not in own["value"]
                assert not any(c["name"] == "tossed" for c in context.cookies())
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
