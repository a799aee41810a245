"""A person opens a notebook: headless Chromium -> gateway token login -> JupyterLab.

The browser visits the notebook's `status.url` (its own origin, <id>.localhost,
which Chromium resolves to loopback itself), is handed to the platform's login
page, trades alice's API token for the gateway cookie, is handed back to the
notebook's origin with a one-time code, lands in JupyterLab,
types `print(6*7)` into a cell, runs it and sees 42. The page is saved as
`var/artifacts/jupyterlab.png` for CI to keep.

Needs Debian's Chromium (`apt-get install -y chromium`); Playwright drives it
through the driver in its wheel, no browser is downloaded.
"""

import re
import shutil
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from nbcloud.notebooks.models import Notebook
from support.paths import ROOT
from support.waiting import wait_state

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = ROOT / "var" / "artifacts" / "jupyterlab.png"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"no {CHROMIUM}: install Debian's browser with `apt-get install -y chromium`",
    ),
]

CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

SPEC = {
    "name": "browser",
    "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
    "resources": {"cpu": 1},
}

NOTEBOOK = {
    "type": "notebook",
    "format": "json",
    "content": {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)"},
            "language_info": {"name": "python"},
        },
        "cells": [
            {
                "cell_type": "code",
                "id": "first",
                "metadata": {},
                "source": "",
                "outputs": [],
                "execution_count": None,
            }
        ],
    },
}


def _run_notebook(alice_api, spec):
    created = alice_api.post("/api/v1/projects/alpha/notebooks/", spec, format="json")
    assert created.status_code == 201, created.content
    notebook_id = created.json()["id"]
    api_url = f"/api/v1/projects/alpha/notebooks/{notebook_id}/"

    status = wait_state(alice_api, api_url, "RUNNING")
    yield notebook_id, status["url"]
    from workers.lifecycle import runtime_for

    notebook = Notebook.objects.filter(pk=notebook_id).first()
    if notebook is not None and notebook.runtime_state:
        runtime_for(notebook).stop(5)


@pytest.fixture
def running_notebook(platform_server, celery_worker_process, conda_env, this_host, alice_api):
    yield from _run_notebook(alice_api, SPEC)


@pytest.fixture
def running_vscode(
    platform_server, celery_worker_process, conda_env, this_host, alice_api, code_server
):
    yield from _run_notebook(
        alice_api, {**SPEC, "name": "browser-vscode", "env": {**SPEC["env"], "editor_id": "vscode"}}
    )


def _token_login(page, url: str, notebook_id: str, token: str) -> None:
    """An unauthenticated browser on the notebook's own origin is handed to the platform,
    which asks for a token on its login page, then hands the browser back (a one-time code)."""
    page.goto(url)
    page.wait_for_url(lambda current: "/gateway/login/" in current)
    handoff = parse_qs(urlsplit(page.url).query)["next"][0]
    assert handoff.startswith("/gateway/handoff/?")
    assert parse_qs(urlsplit(handoff).query)["next"] == [f"/notebooks/{notebook_id}/"]
    assert page.locator("input[name=csrfmiddlewaretoken]").count() == 1
    page.fill("input[name=token]", token)
    page.get_by_role("button", name="Open").click()


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="nbcloud-chromium-")
    with sync_playwright() as playwright:
        # A persistent context is the way to hand Chromium a fresh --user-data-dir.
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 800},
        )
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def test_browser_logs_in_with_a_token_and_runs_a_cell(running_notebook, browser, alice):
    from playwright.sync_api import expect

    notebook_id, url = running_notebook
    token = alice[1]
    # The notebook file, made through the gateway with the platform token.
    made = requests.put(
        f"{url}api/contents/test.ipynb",
        json=NOTEBOOK,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert made.status_code == 201, made.text

    page = browser.pages[0] if browser.pages else browser.new_page()
    page.set_default_timeout(30_000)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    try:
        _token_login(page, url, notebook_id, token)

        # Back at the notebook: JupyterLab, through the gateway's cookie.
        page.wait_for_url(lambda current: current.startswith(f"{url}lab"))
        expect(page.locator("#jp-main-dock-panel")).to_be_visible()

        page.goto(f"{url}lab/tree/test.ipynb")
        cell = page.locator(".jp-NotebookPanel .jp-CodeCell").first
        expect(cell).to_be_visible()
        # The kernel is connected once the status bar reads idle (the toolbar's
        # execution indicator says idle before there is a kernel at all).
        expect(page.locator(".jp-StatusBar-Widget")).to_contain_text(
            re.compile(r"Python 3 \(ipykernel\) \| Idle"), timeout=45_000
        )
        cell.locator(".cm-content").click()
        page.keyboard.type("print(6*7)")
        page.keyboard.press("Shift+Enter")

        output = cell.locator(".jp-OutputArea-output")
        try:
            expect(output).to_have_text("42", timeout=20_000)
        except AssertionError:
            # A run that raced the kernel's connection executes nothing: run it again.
            cell.locator(".cm-content").click()
            page.keyboard.press("Control+Enter")
            expect(output).to_have_text("42", timeout=30_000)
    except Exception:
        page.screenshot(path=str(SCREENSHOT.with_name("jupyterlab-failed.png")))
        raise
    page.screenshot(path=str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 0


def test_browser_opens_the_vscode_workbench(running_vscode, browser, alice):
    from playwright.sync_api import expect

    notebook_id, url = running_vscode
    page = browser.pages[0] if browser.pages else browser.new_page()
    page.set_default_timeout(60_000)
    shot = SCREENSHOT.with_name("vscode.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    try:
        _token_login(page, url, notebook_id, alice[1])
        page.wait_for_url(lambda current: current.startswith(url))
        # The workbench is up once its explorer shows the workspace folder.
        expect(page.locator(".monaco-workbench")).to_be_visible()
        expect(page.locator(".explorer-folders-view, .explorer-viewlet").first).to_be_visible()
    except Exception:
        page.screenshot(path=str(shot.with_name("vscode-failed.png")))
        raise
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 0
