"""Single sign-on with OpenID Connect: claims to project roles, and the whole flow against
a real provider (django-oauth-toolkit, tests/console/oidc_provider/) on loopback."""

import io
import logging
import os
import re
import socket
import subprocess
import sys
import time
from html import unescape
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import override_settings

from nbcloud.console import oidc
from nbcloud.console.oidc import _free_username
from nbcloud.console.sso import roles_from_claim, sync_memberships
from nbcloud.projects.models import Membership, Project, Role
from workers.runtimes.process import free_port

ROOT = Path(__file__).resolve().parents[2]
PROVIDER_DIR = Path(__file__).parent  # holds the oidc_provider package
PREFIX = "nbcloud:"


# The claim's values.


def test_claim_values_give_roles_on_projects():
    value = ["nbcloud:alpha:operator", "nbcloud:bravo:read", "staff", "everyone"]
    assert roles_from_claim(value, PREFIX) == {"alpha": "operator", "bravo": "read"}


def test_one_string_is_one_value_and_the_prefix_is_a_setting():
    assert roles_from_claim("nbcloud:alpha:owner", PREFIX) == {"alpha": "owner"}
    assert roles_from_claim(["acme/alpha:read", "nbcloud:bravo:read"], "acme/") == {"alpha": "read"}


def test_the_strongest_role_wins_when_a_project_is_named_twice():
    value = ["nbcloud:alpha:read", "nbcloud:alpha:owner", "nbcloud:alpha:operator"]
    assert roles_from_claim(value, PREFIX) == {"alpha": "owner"}


def test_bad_values_are_logged_and_ignored(caplog):
    bad = [
        "nbcloud:alpha",  # no role
        "nbcloud:alpha:admin",  # no such role
        "nbcloud::read",  # no project
        "nbcloud:alpha:read:extra",
        "nbcloud:alpha:OWNER",
    ]
    with caplog.at_level(logging.WARNING, logger="nbcloud.console.sso"):
        assert roles_from_claim([*bad, 42, None, "nbcloud:bravo:read"], PREFIX) == {"bravo": "read"}
    logged = caplog.text
    assert all(repr(value) in logged for value in bad)
    assert "expected nbcloud:<project>:<role>" in logged


@pytest.mark.parametrize("value", [{"alpha": "owner"}, 42, True])
def test_a_claim_that_is_no_list_gives_no_roles(value, caplog):
    with caplog.at_level(logging.WARNING, logger="nbcloud.console.sso"):
        assert roles_from_claim(value, PREFIX) == {}
    assert "not a list of strings" in caplog.text


def test_no_claim_gives_no_roles():
    assert roles_from_claim(None, PREFIX) == {}
    assert roles_from_claim([], PREFIX) == {}


# Memberships follow the claim.


def _roles(user) -> dict[str, tuple[str, bool]]:
    return {
        m.project.name: (m.role, m.from_sso)
        for m in Membership.objects.filter(user=user).select_related("project")
    }


@pytest.mark.django_db
def test_memberships_follow_the_claim_but_never_touch_a_hand_granted_one(
    django_user_model, alpha, bravo, caplog
):
    delta = Project.objects.create(name="delta")
    dana = django_user_model.objects.create_user("dana")
    Membership.objects.create(project=delta, user=dana, role=Role.READ)  # by an owner

    with caplog.at_level(logging.WARNING, logger="nbcloud.console.sso"):
        sync_memberships(
            dana, {"alpha": "operator", "bravo": "read", "delta": "owner", "ghost": "owner"}
        )
    assert _roles(dana) == {
        "alpha": ("operator", True),
        "bravo": ("read", True),
        "delta": ("read", False),
    }
    assert "'ghost', which is not a project; ignored" in caplog.text

    sync_memberships(dana, {"alpha": "read"})
    assert _roles(dana) == {"alpha": ("read", True), "delta": ("read", False)}

    sync_memberships(dana, {})
    assert _roles(dana) == {"delta": ("read", False)}


@pytest.mark.django_db
def test_an_owner_setting_a_role_by_hand_takes_it_from_single_sign_on(django_user_model, alpha):
    from django.test import Client

    owner = django_user_model.objects.create_user("olga")
    Membership.objects.create(project=alpha, user=owner, role=Role.OWNER)
    dana = django_user_model.objects.create_user("dana")
    sync_memberships(dana, {"alpha": "operator"})
    client = Client()
    client.force_login(owner)
    page = client.get("/projects/alpha/members/")
    assert "(from single sign-on)" in page.content.decode()

    client.post(f"/projects/alpha/members/{dana.pk}/", {"role": "read"})
    sync_memberships(dana, {"alpha": "owner"})
    sync_memberships(dana, {})
    assert _roles(dana) == {"alpha": ("read", False)}


@pytest.mark.django_db
def test_createuser_gives_a_role_by_hand(django_user_model, alpha, monkeypatch):
    dana = django_user_model.objects.create_user("dana")
    sync_memberships(dana, {"alpha": "operator"})
    monkeypatch.setenv("DANA_PASSWORD", "correct horse battery")
    call_command(
        "createuser", "dana", "--project", "alpha", "--role", "owner",
        "--password-env", "DANA_PASSWORD", stdout=io.StringIO(),
    )  # fmt: skip
    sync_memberships(dana, {})
    assert _roles(dana) == {"alpha": ("owner", False)}


@pytest.mark.django_db
def test_a_new_person_never_gets_the_name_of_an_account_made_here(django_user_model):
    django_user_model.objects.create_user("dana")
    django_user_model.objects.create_user("dana-2")
    assert _free_username({"preferred_username": "dana"}) == "dana-3"
    assert _free_username({"email": "eve@example.org"}) == "eve"
    assert _free_username({"preferred_username": "dana smith/x"}) == "danasmithx"
    assert _free_username({"sub": "1"}) == "sso-user"


# Off unless configured.


@pytest.mark.django_db
def test_single_sign_on_is_off_by_default(client):
    assert not settings.OIDC_ENABLED
    assert "Sign in with" not in client.get("/accounts/login/").content.decode()
    assert client.get("/accounts/oidc/authenticate/").status_code == 404


def test_a_provider_that_does_not_answer_is_unavailable_naming_where_it_was_asked():
    closed = f"http://127.0.0.1:{free_port()}/o"
    endpoints = dict.fromkeys(oidc.ENDPOINTS, "")
    with override_settings(NBCLOUD_OIDC_ISSUER=closed, OIDC_ENDPOINTS=endpoints, OIDC_TIMEOUT=2):
        oidc._discovered.cache_clear()
        try:
            with pytest.raises(oidc.ProviderUnavailable, match=f"{closed}/.well-known/openid"):
                oidc.endpoint("token_endpoint")
        finally:
            oidc._discovered.cache_clear()
    set_by_hand = {**endpoints, "token_endpoint": "http://idp.example/token"}
    with override_settings(OIDC_ENDPOINTS=set_by_hand):
        assert oidc.endpoint("token_endpoint") == "http://idp.example/token"


def _django_setup(**env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); import nbcloud.urls"],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": "platform:.",
            "DJANGO_SETTINGS_MODULE": "nbcloud.settings",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_client_id_without_a_provider_stops_start_up_naming_what_is_missing():
    done = _django_setup(NBCLOUD_OIDC_CLIENT_ID="nbcloud")
    assert done.returncode != 0
    assert "NBCLOUD_OIDC_ISSUER" in done.stderr
    assert "NBCLOUD_OIDC_JWKS_URI" in done.stderr
    done = _django_setup(
        NBCLOUD_OIDC_CLIENT_ID="nbcloud",
        NBCLOUD_OIDC_ISSUER="http://127.0.0.1:9/o",
        NBCLOUD_OIDC_SIGN_ALGO="HS256",
    )
    assert done.returncode != 0
    assert "NBCLOUD_OIDC_SIGN_ALGO='HS256' is not one of" in done.stderr


# The whole flow against a real provider.


def _serve(name: str, argv: list[str], env: dict, port: int, log_dir: Path):
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"{name} did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _database_url() -> str:
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST'] or 'localhost'}{port}/{db['NAME']}"


class Provider:
    """The test provider: its address and its `manage.py` commands."""

    CLIENT_ID, CLIENT_SECRET = "nbcloud", "the client's secret"

    def __init__(self, workdir: Path):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (workdir / "op.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.issuer = f"{self.url}/o"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(PROVIDER_DIR),
            "DJANGO_SETTINGS_MODULE": "oidc_provider.settings",
            "OP_DATABASE": str(workdir / "op.sqlite3"),
            "OP_RSA_KEY": str(workdir / "op.pem"),
        }

    def manage(self, *args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "django", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr

    def person(self, username: str, password: str, groups: list[str]) -> None:
        self.manage(
            "provider_person", username, "--password", password,
            "--email", f"{username}@example.org", "--groups", *groups,
        )  # fmt: skip


@pytest.fixture
def sso(tmp_path, transactional_db):
    """The provider and the platform (uvicorn) configured to sign in with it."""
    provider = Provider(tmp_path)
    platform_port = free_port()
    platform = f"http://127.0.0.1:{platform_port}"
    provider.manage("migrate", "--noinput")
    provider.manage(
        "provider_client",
        provider.CLIENT_ID,
        provider.CLIENT_SECRET,
        f"{platform}/accounts/oidc/callback/",
    )
    op = _serve(
        "oidc-provider",
        [sys.executable, "-m", "django", "runserver", f"127.0.0.1:{provider.port}", "--noreload"],
        provider.env,
        provider.port,
        tmp_path,
    )
    web_env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "NBCLOUD_DATA_DIR": str(settings.DATA_DIR),
        "NBCLOUD_PUBLIC_URL": platform,
        "NBCLOUD_OIDC_ISSUER": provider.issuer,
        "NBCLOUD_OIDC_CLIENT_ID": provider.CLIENT_ID,
        "NBCLOUD_OIDC_CLIENT_SECRET": provider.CLIENT_SECRET,
        "NBCLOUD_OIDC_NAME": "Example ID",
        "NBCLOUD_OIDC_SCOPES": "openid email profile groups",
    }
    argv = [str(Path(sys.executable).parent / "uvicorn"), "nbcloud.asgi:application"]
    argv += ["--host", "127.0.0.1", "--port", str(platform_port), "--app-dir", "platform"]
    web = _serve("web-oidc", argv, web_env, platform_port, tmp_path)
    try:
        yield provider, platform
    finally:
        _stop(web)
        _stop(op)


def _form_fields(html: str) -> dict[str, str]:
    return {
        name: unescape(value)
        for name, value in re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', html)
    }


def sign_in(browser: httpx.Client, platform: str, username: str, password: str):
    """As a browser would: the console's button, the provider's form, back to the console;
    the page it lands on."""
    login = browser.get(f"{platform}/accounts/login/")
    button = re.search(r'<a class="button" id="sso" href="([^"]+)">([^<]+)</a>', login.text)
    assert button, login.text
    assert button[2] == "Sign in with Example ID"
    form = browser.get(urljoin(platform, unescape(button[1])))
    assert "Test provider: sign in" in form.text, form.text
    fields = {**_form_fields(form.text), "username": username, "password": password}
    page = browser.post(str(form.url), data=fields)
    assert str(page.url).startswith(platform), page.url
    assert page.status_code == 200, page.text
    return page


def a_browser() -> httpx.Client:
    return httpx.Client(follow_redirects=True, timeout=30)


@pytest.mark.e2e
def test_people_sign_in_with_the_provider_and_get_the_roles_their_groups_say(sso):
    provider, platform = sso
    for name in ("alpha", "bravo", "delta", "echo"):
        Project.objects.create(name=name)
    provider.person(
        "dana",
        "dana's password",
        ["nbcloud:alpha:operator", "nbcloud:bravo:read", "nbcloud:ghost:owner",
         "nbcloud:alpha:admin", "staff"],
    )  # fmt: skip

    with a_browser() as browser:
        page = sign_in(browser, platform, "dana", "dana's password")
        assert urlsplit(str(page.url)).path == "/projects/alpha/"
        assert '<span class="who">dana</span>' in page.text
        assert browser.get(f"{platform}/projects/bravo/").status_code == 200
        assert browser.get(f"{platform}/projects/echo/").status_code == 404
    dana = get_user_model().objects.get(username="dana")
    assert (dana.is_staff, dana.is_superuser, dana.has_usable_password()) == (False, False, False)
    assert dana.email == "dana@example.org"
    assert dana.sso_identity.issuer == provider.issuer
    assert _roles(dana) == {"alpha": ("operator", True), "bravo": ("read", True)}

    # An owner grants delta by hand; an operator makes dana staff by hand.
    Membership.objects.create(project=Project.objects.get(name="delta"), user=dana, role="read")
    get_user_model().objects.filter(pk=dana.pk).update(is_staff=True)
    provider.person("dana", "dana's password", ["nbcloud:alpha:read", "nbcloud:delta:owner"])

    with a_browser() as browser:
        page = sign_in(browser, platform, "dana", "dana's password")
        assert urlsplit(str(page.url)).path == "/projects/alpha/"
        assert browser.get(f"{platform}/projects/delta/").status_code == 200
        assert browser.get(f"{platform}/projects/bravo/").status_code == 404
    assert get_user_model().objects.filter(username__startswith="dana").count() == 1
    dana.refresh_from_db()
    assert dana.is_staff
    assert _roles(dana) == {"alpha": ("read", True), "delta": ("read", False)}
