"""The hand-off's rules, cookie by cookie and code by code (in process; the end-to-end
flows are in tests/gateway/test_gateway_access_matrix.py and test_gateway_cookies.py)."""

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from nbcloud.gateway import handoff, routing
from nbcloud.gateway.authorize import Caller, identify, is_platform_cookie
from nbcloud.gateway.models import HandoffCode
from nbcloud.gateway.proxy import editor_cookie_allowed
from support.factories import make_notebook

ROOT = Path(__file__).resolve().parent.parent.parent
pytestmark = pytest.mark.django_db


@pytest.fixture
def notebook(alpha):
    return make_notebook(alpha, state="RUNNING", labels={"team": "vision"})


def _issue(user, notebook, state="the-state", next_path=None) -> str:
    next_path = next_path or f"/notebooks/{notebook.pk}/lab"
    return handoff.issue(Caller(user=user), notebook, state, next_path)


def test_a_code_is_claimed_once_by_the_browser_that_started(notebook, alice):
    code = _issue(alice[0], notebook)
    assert code not in json.dumps(list(HandoffCode.objects.values()), default=str)  # hashed
    value, next_path = handoff.claim(str(notebook.pk), code, "the-state")
    assert next_path == f"/notebooks/{notebook.pk}/lab"
    caller = identify("", {"nbcloud_notebook": value}, str(notebook.pk))
    assert caller.user == alice[0] and caller.ambient
    with pytest.raises(handoff.HandoffRefused, match="already used"):
        handoff.claim(str(notebook.pk), code, "the-state")


def test_a_code_opens_its_own_notebook_only(notebook, alice, alpha):
    other = make_notebook(alpha, state="RUNNING")
    code = _issue(alice[0], notebook)
    with pytest.raises(handoff.HandoffRefused, match="unknown"):
        handoff.claim(str(other.pk), code, "the-state")
    value, _ = handoff.claim(str(notebook.pk), code, "the-state")
    # Nor does the cookie it gives open another notebook.
    assert identify("", {"nbcloud_notebook": value}, str(other.pk)) == Caller()


def test_a_code_needs_its_state_and_its_time(notebook, alice, settings):
    for state in ["", "another-state"]:
        code = _issue(alice[0], notebook)
        with pytest.raises(handoff.HandoffRefused, match="another browser"):
            handoff.claim(str(notebook.pk), code, state)
    code = _issue(alice[0], notebook)
    HandoffCode.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(handoff.HandoffRefused, match="expired"):
        handoff.claim(str(notebook.pk), code, "the-state")
    settings.NBCLOUD_HANDOFF_CODE_AGE = 30
    _issue(alice[0], notebook)
    left = HandoffCode.objects.get().expires_at - timezone.now()
    assert timedelta(seconds=25) < left <= timedelta(seconds=30)


def test_a_code_for_someone_who_lost_the_notebook_opens_nothing(notebook, alice, bob):
    from nbcloud.projects.models import Membership

    code = _issue(bob[0], notebook)
    Membership.objects.filter(user=bob[0]).delete()
    with pytest.raises(handoff.HandoffRefused, match="no longer"):
        handoff.claim(str(notebook.pk), code, "the-state")
    code = _issue(alice[0], notebook)
    alice[0].is_active = False
    alice[0].save()
    with pytest.raises(handoff.HandoffRefused, match="no longer"):
        handoff.claim(str(notebook.pk), code, "the-state")


def test_next_stays_inside_the_notebook(notebook, alice):
    base = routing.base_path(notebook.pk)
    for evil in ["https://evil.example/", "//evil.example/", f"{base}/..//evil", "/admin/"]:
        code = _issue(alice[0], notebook, next_path=evil)
        assert handoff.claim(str(notebook.pk), code, "the-state")[1] == base


def test_the_notebook_cookie_ends_with_a_password_change(notebook, alice):
    value, _ = handoff.claim(str(notebook.pk), _issue(alice[0], notebook), "the-state")
    alice[0].set_password("a new one")
    alice[0].save()
    assert identify("", {"nbcloud_notebook": value}, str(notebook.pk)) == Caller()


@pytest.mark.parametrize(
    ("set_cookie", "allowed"),
    [
        ("theme=dark; Path=/", True),
        ("_xsrf=2|abc; Path=/notebooks/x/", True),
        ("sessionid=x; Path=/", False),
        ("SESSIONID=x", False),
        ("csrftoken=x; Path=/", False),
        ("nbcloud_gateway=x", False),
        ("nbcloud_notebook=x", False),
        ("__Host-nbcloud_notebook=x; Secure; Path=/", False),
        ("__Secure-sessionid=x; Secure", False),
        ("nbcloud_handoff_state=x", False),
        ("theme=dark; Domain=localhost; Path=/", False),
        ("theme=dark; Domain=.example.org", False),
        ("not a cookie", False),
        ("code-server-session=abc; Path=/", False),
    ],
)
def test_editor_set_cookie_filter(set_cookie, allowed):
    assert editor_cookie_allowed(set_cookie) is allowed


def test_platform_cookie_names():
    assert is_platform_cookie("sessionid") and is_platform_cookie("__Host-NBCLOUD_NOTEBOOK")
    assert not is_platform_cookie("_xsrf")


def test_origins_follow_the_public_url(settings):
    nb = "0f0e0d0c-0b0a-4908-8706-050403020100"
    settings.NBCLOUD_PUBLIC_URL = "http://127.0.0.1:8123"
    settings.NBCLOUD_NOTEBOOK_DOMAIN = "localhost"
    assert routing.public_url(nb) == f"http://{nb}.localhost:8123/notebooks/{nb}/"
    assert routing.notebook_of_host(f"{nb}.LOCALHOST:8123") == nb
    assert routing.notebook_of_host("127.0.0.1:8123") is None
    assert routing.notebook_of_host(f"{nb}.localhost.evil.example") is None
    assert routing.notebook_of_host(f"x.{nb}.localhost") is None
    settings.NBCLOUD_PUBLIC_URL = "https://platform.example.org"
    settings.NBCLOUD_NOTEBOOK_DOMAIN = "nb.example.net"
    assert routing.public_url(nb) == f"https://{nb}.nb.example.net/notebooks/{nb}/"
    assert handoff.cookie_name("nbcloud_notebook") == "__Host-nbcloud_notebook"
    cookie = handoff.notebook_cookie("v")
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Domain" not in cookie and "Path=/" in cookie


def _settings_of(**env) -> dict:
    code = (
        "import django, json; django.setup(); from django.conf import settings as s; "
        "print(json.dumps({k: getattr(s, k) for k in ['NBCLOUD_NOTEBOOK_DOMAIN', "
        "'SESSION_COOKIE_SECURE', 'SESSION_COOKIE_HTTPONLY', 'SESSION_COOKIE_SAMESITE', "
        "'CSRF_COOKIE_SECURE', 'CSRF_COOKIE_HTTPONLY', 'CSRF_COOKIE_SAMESITE']}))"
    )
    environ = {k: v for k, v in os.environ.items() if k != "NBCLOUD_NOTEBOOK_DOMAIN"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={
            **environ,
            "PYTHONPATH": "platform:.",
            "DJANGO_SETTINGS_MODULE": "nbcloud.settings",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_platforms_cookies_and_the_default_notebook_domain():
    local = _settings_of(NBCLOUD_PUBLIC_URL="http://localhost:8000")
    assert local["NBCLOUD_NOTEBOOK_DOMAIN"] == "localhost"
    assert local["SESSION_COOKIE_HTTPONLY"] and local["CSRF_COOKIE_HTTPONLY"]
    assert local["SESSION_COOKIE_SAMESITE"] == local["CSRF_COOKIE_SAMESITE"] == "Lax"
    assert not local["SESSION_COOKIE_SECURE"]
    production = _settings_of(
        NBCLOUD_PUBLIC_URL="https://nbcloud.example.org", NBCLOUD_NOTEBOOK_DOMAIN="nb.example.net"
    )
    assert production["NBCLOUD_NOTEBOOK_DOMAIN"] == "nb.example.net"
    assert production["SESSION_COOKIE_SECURE"] and production["CSRF_COOKIE_SECURE"]
    # A public URL elsewhere without a domain: notebooks share the platform's origin.
    shared = _settings_of(NBCLOUD_PUBLIC_URL="https://nbcloud.example.org")
    assert shared["NBCLOUD_NOTEBOOK_DOMAIN"] == ""
