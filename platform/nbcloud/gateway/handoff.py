"""The one-time hand-off from the platform's origin to a notebook's own.

Each notebook has an origin of its own (routing.py), where the platform's
cookies are never sent. A browser reaches it the way JupyterHub's subdomains
do (an OAuth-like code exchange):

1. The browser asks the notebook's origin for a page without a cookie there.
   The gateway sets a random `state` in a cookie of that origin and sends the
   browser to the platform: `/gateway/handoff/?notebook=<id>&state=...&next=...`.
2. The platform identifies the browser by its own cookies (a session, or the
   token traded at `/gateway/login/`, which it asks for first when there is
   neither). Someone who may see the notebook gets a single-use code, valid
   NBCLOUD_HANDOFF_CODE_AGE seconds and bound to that notebook and state,
   and is sent to `<notebook origin>/_nbcloud/handoff?code=...`.
3. The gateway on the notebook's origin claims the code (once: it is deleted
   as it is used), checks the state cookie matches, and sets the notebook
   origin's own cookie (HttpOnly, SameSite=Lax, host-only; Secure and
   `__Host-` under https), then sends the browser to `next`.

Only hashes of codes and states are stored (models.HandoffCode).
"""

import hashlib
import hmac
import secrets
from datetime import timedelta
from http.cookies import SimpleCookie
from urllib.parse import urlencode

from django.conf import settings
from django.utils import timezone

from . import routing
from .authorize import (
    NOTEBOOK_COOKIE,
    STATE_COOKIE,
    Caller,
    _caller_sees,
    _live_token,
    cookie_name,
    secure,
    sign_notebook_cookie,
)

STATE_AGE = 900  # seconds a browser has to sign in on the platform and come back


class HandoffRefused(Exception):
    pass


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def set_cookie(name: str, value: str, *, max_age: int) -> str:
    """A Set-Cookie value for the notebook's origin only: no Domain, HttpOnly, Lax."""
    jar = SimpleCookie()
    jar[name] = value
    morsel = jar[name]
    morsel["path"] = "/"
    morsel["max-age"] = max_age
    morsel["httponly"] = True
    morsel["samesite"] = "Lax"
    if secure():
        morsel["secure"] = True
    return morsel.OutputString()


def start(notebook_id: str, next_path: str) -> tuple[str, str]:
    """Where to send a browser to be handed to this notebook, and its state cookie."""
    state = secrets.token_urlsafe(32)
    query = urlencode({"notebook": notebook_id, "state": state, "next": next_path})
    location = routing.platform_url(f"/gateway/handoff/?{query}")
    return location, set_cookie(cookie_name(STATE_COOKIE), state, max_age=STATE_AGE)


def safe_next(notebook_id: str, next_path: str) -> str:
    """`next_path` when it is a path of this notebook (no scheme, host or '//'), else its root."""
    base = routing.base_path(notebook_id)
    if next_path.startswith(base) and "\\" not in next_path and "//" not in next_path:
        return next_path
    return base


def issue(caller: Caller, notebook, state: str, next_path: str) -> str:
    """A single-use code handing `caller` (who sees `notebook`) to its origin."""
    from .models import HandoffCode

    now = timezone.now()
    HandoffCode.objects.filter(expires_at__lt=now).delete()
    code = secrets.token_urlsafe(32)
    HandoffCode.objects.create(
        code_hash=_hash(code),
        state_hash=_hash(state),
        notebook=notebook,
        user=caller.user if caller.token is None else None,
        token=caller.token,
        next_path=safe_next(str(notebook.pk), next_path),
        expires_at=now + timedelta(seconds=settings.NBCLOUD_HANDOFF_CODE_AGE),
    )
    return code


def exchange_url(notebook_id: str, code: str) -> str:
    return f"{routing.origin(notebook_id)}{routing.HANDOFF_PATH}?{urlencode({'code': code})}"


def claim(notebook_id: str, code: str, state: str) -> tuple[str, str]:
    """(the notebook cookie's value, where to go next) for a code; HandoffRefused says why not."""
    from .models import HandoffCode

    again = "Open the notebook's URL again to sign in."
    row = (
        HandoffCode.objects.select_related("notebook__project", "user")
        .filter(code_hash=_hash(code or ""), notebook_id=notebook_id)
        .first()
    )
    # Deleting is the claim: of two requests with one code, one deletes it.
    if row is None or HandoffCode.objects.filter(pk=row.pk).delete()[0] != 1:
        raise HandoffRefused(f"This sign-in code is unknown or was already used. {again}")
    if row.expires_at < timezone.now():
        raise HandoffRefused(f"This sign-in code has expired. {again}")
    if not state or not hmac.compare_digest(_hash(state), row.state_hash):
        raise HandoffRefused(f"This sign-in code was issued to another browser. {again}")
    if row.token_id is not None:
        token = _live_token(row.token_id, row.token.key_hash[:16]) if row.token else None
        caller = Caller(token=token)
    else:
        caller = Caller(user=row.user if row.user and row.user.is_active else None)
    if (caller.token is None and caller.user is None) or not _caller_sees(caller, row.notebook):
        raise HandoffRefused(f"You may no longer open this notebook. {again}")
    value = sign_notebook_cookie(notebook_id, user=caller.user, token=caller.token)
    return value, row.next_path


def notebook_cookie(value: str) -> str:
    return set_cookie(cookie_name(NOTEBOOK_COOKIE), value, max_age=settings.SESSION_COOKIE_AGE)


def forget_notebook_cookie() -> str:
    return set_cookie(cookie_name(NOTEBOOK_COOKIE), "", max_age=0)


def forget_state() -> str:
    return set_cookie(cookie_name(STATE_COOKIE), "", max_age=0)
