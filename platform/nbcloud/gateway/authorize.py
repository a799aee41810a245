"""The one decision: may this request enter this notebook's editor?

Every request to an editor, HTTP or WebSocket, is decided here, and nowhere
else. Whoever may not see the notebook gets 404, as in the API; nobody
identified gets 401 (browsers are sent to sign in: through the platform's
one-time hand-off when notebooks have origins of their own, handoff.py); an
identified caller without the right gets 403. Unsafe methods and WebSockets
must come from the notebook's own origin when a browser says where it comes
from (Origin), and must say so when only a cookie identifies the caller.
"""

import hashlib
from dataclasses import dataclass
from http.cookies import SimpleCookie
from importlib import import_module
from urllib.parse import quote, urlsplit

from django.conf import settings
from django.contrib.auth import get_user
from django.core import signing

from nbcloud.api.access import token_allows
from nbcloud.errors import NotAuthenticated
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import State
from nbcloud.projects.models import WRITE_ROLES, ApiToken, Role

from . import routing

TOKEN_COOKIE = "nbcloud_gateway"  # the platform origin's: an API token traded at /gateway/login/
TOKEN_COOKIE_SALT = "nbcloud.gateway.token"
NOTEBOOK_COOKIE = "nbcloud_notebook"  # a notebook origin's, from a hand-off code
NOTEBOOK_COOKIE_SALT = "nbcloud.gateway.notebook"
STATE_COOKIE = "nbcloud_handoff_state"  # a notebook origin's, while a hand-off runs
# Cookies an editor may neither read nor set (compared without case or
# __Host-/__Secure- prefixes).
PLATFORM_COOKIES = frozenset(
    name.lower()
    for name in (
        settings.SESSION_COOKIE_NAME,
        settings.CSRF_COOKIE_NAME,
        TOKEN_COOKIE,
        NOTEBOOK_COOKIE,
        STATE_COOKIE,
    )
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# What a caller who may only look (role `read`) may send: pages and files.
LOOK_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Decision:
    status: int  # 200: enter; otherwise the answer to give
    message: str = ""
    upstream: str = ""  # the editor's own base URL
    editor_id: str = ""
    secret: str = ""
    location: str = ""  # for 302
    set_cookies: tuple[str, ...] = ()  # Set-Cookie values to send with a refusal

    @property
    def allowed(self) -> bool:
        return self.status == 200

    @property
    def code_server_session(self) -> str:
        """code-server runs with HASHED_PASSWORD=sha256(secret) (workers/runtimes/
        editors.py) and takes a session cookie equal to that hash."""
        return hashlib.sha256(self.secret.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    token: ApiToken | None = None
    user: object | None = None
    ambient: bool = False  # identified by a cookie the browser sends by itself


def secure() -> bool:
    return settings.NBCLOUD_PUBLIC_URL.startswith("https://")


def cookie_name(name: str) -> str:
    """A notebook origin's cookie name: `__Host-` under https, so that no sibling origin
    can set it (browsers refuse a `__Host-` cookie with a Domain or without Secure)."""
    return f"__Host-{name}" if secure() else name


def is_platform_cookie(name: str) -> bool:
    name = name.strip().lower()
    for prefix in ("__host-", "__secure-"):
        name = name.removeprefix(prefix)
    return name in PLATFORM_COOKIES


def sign_notebook_cookie(notebook_id: str, *, user=None, token: ApiToken | None = None) -> str:
    """The value of a notebook origin's cookie: who was handed there, for which notebook."""
    if token is not None:
        data = {"n": str(notebook_id), "t": token.pk, "h": token.key_hash[:16]}
    else:
        data = {"n": str(notebook_id), "u": user.pk, "a": user.get_session_auth_hash()[:16]}
    return signing.dumps(data, salt=NOTEBOOK_COOKIE_SALT)


def _caller_from_notebook_cookie(value: str, notebook_id: str) -> "Caller | None":
    try:
        data = signing.loads(value, salt=NOTEBOOK_COOKIE_SALT, max_age=settings.SESSION_COOKIE_AGE)
    except signing.BadSignature:
        return None
    if data.get("n") != str(notebook_id):
        return None
    if "t" in data:
        token = _live_token(data.get("t"), data.get("h"))
        return Caller(token=token, ambient=True) if token is not None else None
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.filter(pk=data.get("u"), is_active=True).first()
    # A changed password ends it, as it ends the user's platform sessions.
    if user is None or user.get_session_auth_hash()[:16] != data.get("a"):
        return None
    return Caller(user=user, ambient=True)


def sign_token_cookie(token: ApiToken) -> str:
    return signing.dumps({"t": token.pk, "h": token.key_hash[:16]}, salt=TOKEN_COOKIE_SALT)


def _token_from_cookie(value: str) -> ApiToken | None:
    try:
        data = signing.loads(value, salt=TOKEN_COOKIE_SALT, max_age=settings.SESSION_COOKIE_AGE)
    except signing.BadSignature:
        return None
    return _live_token(data.get("t"), data.get("h"))


def _live_token(pk, key_hash: str | None) -> ApiToken | None:
    token = ApiToken.objects.select_related("user", "project").filter(pk=pk).first()
    # A renewed or deleted token no longer opens anything, nor one whose user
    # is disabled (as with the token itself: ApiToken.for_value).
    if (
        token is None
        or token.key_hash[:16] != key_hash
        or token.is_expired
        or not token.user.is_active
    ):
        return None
    return token


class _SessionRequest:
    def __init__(self, session):
        self.session = session


def _session_user(session_key: str):
    engine = import_module(settings.SESSION_ENGINE)
    user = get_user(_SessionRequest(engine.SessionStore(session_key)))
    return user if user.is_authenticated else None


def identify(
    authorization: str, cookies: dict[str, str], notebook_id: str = ""
) -> Caller | Decision:
    scheme, _, value = authorization.partition(" ")
    if scheme == "Bearer":
        try:
            return Caller(token=ApiToken.for_value(value.strip()))
        except NotAuthenticated as exc:  # unknown, expired, disabled
            return Decision(401, str(exc))
    if notebook_id and cookie_name(NOTEBOOK_COOKIE) in cookies:
        caller = _caller_from_notebook_cookie(cookies[cookie_name(NOTEBOOK_COOKIE)], notebook_id)
        if caller is not None:
            return caller
    if TOKEN_COOKIE in cookies:
        token = _token_from_cookie(cookies[TOKEN_COOKIE])
        if token is not None:
            return Caller(token=token, ambient=True)
    if settings.SESSION_COOKIE_NAME in cookies:
        user = _session_user(cookies[settings.SESSION_COOKIE_NAME])
        if user is not None:
            return Caller(user=user, ambient=True)
    return Caller()


def _same_origin(origin: str, host: str) -> bool:
    return bool(origin) and urlsplit(origin).netloc.lower() == host.lower()


def parse_cookies(header: str) -> dict[str, str]:
    jar = SimpleCookie()
    try:
        jar.load(header)
    except Exception:
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


def authorize(
    notebook_id: str,
    *,
    method: str,
    host: str,
    authorization: str = "",
    cookies: dict[str, str] | None = None,
    origin: str = "",
    websocket: bool = False,
    wants_html: bool = False,
    path: str = "",
    query: str = "",
) -> Decision:
    cookies = cookies or {}
    notebook = (
        Notebook.objects.select_related("project")
        .exclude(state=State.DELETED)
        .filter(pk=notebook_id)
        .first()
    )
    if notebook is None:
        return Decision(404, "No such notebook.")
    browsing = wants_html and not websocket and method in LOOK_METHODS
    if not routing.host_allowed(notebook_id, host):
        # On the platform's origin a browser is sent to the notebook's own;
        # on another notebook's origin, this notebook does not exist.
        if browsing and routing.notebook_of_host(host) is None:
            location = routing.origin(notebook_id) + path + (f"?{query}" if query else "")
            return Decision(302, "This notebook has an origin of its own.", location=location)
        return Decision(404, "No such notebook.")
    if not notebook.unsecure_http:
        caller = identify(authorization, cookies, notebook_id)
        if isinstance(caller, Decision):
            return caller
        if caller.token is None and caller.user is None:
            if browsing:
                return _sign_in(notebook_id, path, query)
            return Decision(401, "Sign in or send an API token (Authorization: Bearer ...).")
        if not _caller_sees(caller, notebook):
            return Decision(404, "No such notebook.")
        # Cookies travel with cross-site requests, and pages of other origins
        # can send tokens they hold: a change or a WebSocket must come from
        # this notebook's own origin, and say so when a cookie is all it has.
        if (websocket or method not in SAFE_METHODS) and (
            (origin and not _same_origin(origin, host)) or (caller.ambient and not origin)
        ):
            return Decision(
                403,
                "Cross-origin request refused: changes and WebSockets must come from the "
                f"notebook's own origin ({routing.origin(notebook_id)}).",
            )
        role = _caller_role(caller, notebook)
        if role not in WRITE_ROLES and (websocket or method not in LOOK_METHODS):
            # Kernels, terminals and every change go through WebSockets or
            # unsafe methods: a caller who may only look gets neither.
            what = "a WebSocket (kernels, terminals)" if websocket else f"a {method} request"
            return Decision(
                403,
                f"Your role on this notebook is {role}: it may look (GET) but not run code "
                f"or change anything, so {what} is refused. Ask for the operator role.",
            )
    if notebook.state != State.RUNNING or not notebook.editor_url:
        return Decision(503, f"The notebook is {notebook.state}, not RUNNING: start it first.")
    return Decision(
        200,
        upstream=notebook.editor_url,
        editor_id=notebook.editor_id,
        secret=notebook.editor_secret,
    )


def _sign_in(notebook_id: str, path: str, query: str) -> Decision:
    """Where a browser nobody identified goes: the token login page on a shared origin,
    the platform's hand-off on a notebook's own (handoff.py)."""
    next_path = path + (f"?{query}" if query else "")
    if not routing.per_notebook_origins():
        return Decision(
            302,
            "Sign in to open this notebook.",
            location=routing.platform_url(f"/gateway/login/?next={quote(next_path)}"),
        )
    from .handoff import start

    location, state_cookie = start(notebook_id, next_path)
    return Decision(
        302, "Sign in to open this notebook.", location=location, set_cookies=(state_cookie,)
    )


def _caller_role(caller: Caller, notebook: Notebook) -> str:
    """The caller's role on a notebook it sees (as the API decides: api.views.project_role)."""
    if caller.token is not None:
        return caller.token.role
    if caller.user.is_superuser:
        return Role.OPERATOR
    role = notebook.project.role_of(caller.user)
    if role in WRITE_ROLES:
        return role
    grant = notebook.grants.filter(user=caller.user).first()
    if grant is not None and grant.role in WRITE_ROLES:
        return grant.role
    return role or (grant.role if grant else Role.READ)


def _caller_sees(caller: Caller, notebook: Notebook) -> bool:
    if caller.token is not None:
        return caller.token.project_id == notebook.project_id and token_allows(
            caller.token, notebook.labels
        )
    if caller.user.is_superuser:
        return True
    if notebook.project.role_of(caller.user) is not None:
        return True
    return notebook.grants.filter(user=caller.user).exists()
