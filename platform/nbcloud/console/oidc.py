"""Single sign-on with OpenID Connect, through mozilla-django-oidc (docs/console.md).

The authorization code flow with PKCE: the sign-in view sends the browser to the
provider, the callback trades the code for tokens, checks the ID token (signature with
the provider's JWKS, nonce, issuer, audience, expiry) and signs the person in. People
are found by the ID token's issuer and `sub` (`SingleSignOnIdentity`), never by e-mail
address; someone new gets an account (never staff) with a user name taken from
`preferred_username` or the e-mail address. At every sign-in the roles claim sets the
memberships single sign-on made (`nbcloud.console.sso`).

The provider's endpoints are discovered from NBCLOUD_OIDC_ISSUER on first use, not at
start-up, so a provider that is down never stops the platform nor password sign-in.
"""

import logging
import re
import time
from functools import lru_cache

import requests
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import timezone
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from .models import SingleSignOnIdentity
from .sso import roles_from_claim, sync_memberships

logger = logging.getLogger(__name__)

ENDPOINTS = ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri")


class ProviderUnavailable(Exception):
    """The provider's configuration could not be read; the message says why."""


@lru_cache(maxsize=1)
def _discovered() -> dict:
    url = f"{settings.NBCLOUD_OIDC_ISSUER}/.well-known/openid-configuration"
    try:
        response = requests.get(url, timeout=settings.OIDC_TIMEOUT)
        response.raise_for_status()
        config = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise ProviderUnavailable(
            f"{url} did not answer with the provider's configuration: {exc}"
        ) from exc
    if str(config.get("issuer", "")).rstrip("/") != settings.NBCLOUD_OIDC_ISSUER:
        raise ProviderUnavailable(
            f"{url} names the issuer {config.get('issuer')!r}, not NBCLOUD_OIDC_ISSUER="
            f"{settings.NBCLOUD_OIDC_ISSUER!r}: set NBCLOUD_OIDC_ISSUER to the provider's issuer"
        )
    return config


def endpoint(name: str) -> str:
    """One of the provider's ENDPOINTS: as set, else discovered (and then remembered)."""
    configured = settings.OIDC_ENDPOINTS[name]
    if configured:
        return configured
    found = _discovered().get(name)
    if not found:
        raise ProviderUnavailable(
            f"the provider's configuration has no {name}: set NBCLOUD_OIDC_{name.upper()}"
        )
    return found


def callback_url() -> str:
    """Where the provider sends people back: register it with the provider."""
    return settings.NBCLOUD_PUBLIC_URL + reverse("console:oidc_authentication_callback")


def _unavailable(request, exc: Exception):
    logger.error("single sign-on failed: %s", exc)
    messages.error(
        request,
        f"Single sign-on with {settings.NBCLOUD_OIDC_NAME} is unavailable just now; "
        "try again later or sign in with your password.",
    )
    return redirect("console:login")


class SignInView(OIDCAuthenticationRequestView):
    """Sends the browser to the provider, coming back to the public callback URL."""

    def get(self, request):
        try:
            self.OIDC_OP_AUTH_ENDPOINT = endpoint("authorization_endpoint")
        except ProviderUnavailable as exc:
            return _unavailable(request, exc)
        return super().get(request)

    def get_extra_params(self, request) -> dict:
        return {**super().get_extra_params(request), "redirect_uri": callback_url()}


class CallbackView(OIDCAuthenticationCallbackView):
    """Signs the person in, or says on the sign-in page that it did not work."""

    def get(self, request):
        try:
            return super().get(request)
        except (ProviderUnavailable, requests.RequestException) as exc:
            return _unavailable(request, exc)
        except SuspiciousOperation as exc:  # a bad ID token, an unknown state
            logger.warning("single sign-on refused: %s", exc)
            return self.login_failure()

    def login_failure(self):
        messages.error(
            self.request,
            f"Single sign-on with {settings.NBCLOUD_OIDC_NAME} did not sign you in. Try "
            "again; if it keeps failing, your administrator can read why in the platform's log.",
        )
        return redirect("console:login")


class ProjectRolesBackend(OIDCAuthenticationBackend):
    """mozilla-django-oidc's backend, matching people by issuer and `sub` and setting
    their single sign-on memberships from the roles claim."""

    def __init__(self, *args, **kwargs):
        # Django builds every backend for every sign-in, passwords included: the
        # provider's endpoints are looked up only when a code comes back from it.
        self.UserModel = get_user_model()
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
        self.OIDC_RP_CLIENT_SECRET = settings.OIDC_RP_CLIENT_SECRET
        self.OIDC_RP_SIGN_ALGO = settings.OIDC_RP_SIGN_ALGO
        self.OIDC_RP_IDP_SIGN_KEY = None

    def authenticate(self, request, **kwargs):
        if request is None or "code" not in request.GET or "state" not in request.GET:
            return None
        self.OIDC_OP_TOKEN_ENDPOINT = endpoint("token_endpoint")
        self.OIDC_OP_USER_ENDPOINT = endpoint("userinfo_endpoint")
        self.OIDC_OP_JWKS_ENDPOINT = endpoint("jwks_uri")
        return super().authenticate(request, **kwargs)

    def get_user(self, user_id):
        # Django's, not the library's: a deactivated account's sessions end at once.
        return ModelBackend.get_user(self, user_id)

    def get_token(self, payload: dict) -> dict:
        return super().get_token({**payload, "redirect_uri": callback_url()})

    def verify_token(self, token, **kwargs) -> dict:
        """The library checks the signature and nonce; OpenID Connect Core 3.1.3.7 also
        asks for the issuer, the audience and the expiry."""
        payload = super().verify_token(token, **kwargs)
        issuer = str(payload.get("iss", "")).rstrip("/")
        if settings.NBCLOUD_OIDC_ISSUER and issuer != settings.NBCLOUD_OIDC_ISSUER:
            raise SuspiciousOperation(f"ID token from issuer {issuer!r}, not the configured one")
        audience = payload.get("aud")
        audience = audience if isinstance(audience, list) else [audience]
        if self.OIDC_RP_CLIENT_ID not in audience:
            raise SuspiciousOperation(f"ID token for {audience}, not this client")
        if not isinstance(payload.get("exp"), int | float) or payload["exp"] < time.time():
            raise SuspiciousOperation("ID token expired")
        if not payload.get("sub"):
            raise SuspiciousOperation("ID token without sub")
        return payload

    def get_userinfo(self, access_token, id_token, payload) -> dict:
        """The ID token's claims and the userinfo endpoint's together: providers put
        groups in one or the other."""
        userinfo = super().get_userinfo(access_token, id_token, payload)
        if userinfo.get("sub") != payload["sub"]:
            raise SuspiciousOperation("userinfo is about someone else than the ID token")
        return {**payload, **userinfo, "iss": payload.get("iss", "")}

    def verify_claims(self, claims: dict) -> bool:
        return bool(claims.get("sub"))

    def filter_users_by_claims(self, claims: dict):
        return self.UserModel.objects.filter(
            sso_identity__issuer=claims.get("iss", ""), sso_identity__subject=claims["sub"]
        )

    def create_user(self, claims: dict):
        with transaction.atomic():
            user = self.UserModel.objects.create_user(
                _free_username(claims), email=claims.get("email", "")
            )
            SingleSignOnIdentity.objects.create(
                user=user, issuer=claims.get("iss", ""), subject=claims["sub"]
            )
        logger.info("single sign-on: new person %s (%s)", user.username, claims["sub"])
        return self.update_user(user, claims)

    def update_user(self, user, claims: dict):
        """E-mail address and memberships from the claims; staff status never."""
        email = claims.get("email")
        if isinstance(email, str) and email != user.email:
            user.email = email
            user.save(update_fields=["email"])
        SingleSignOnIdentity.objects.filter(user=user).update(last_sign_in_at=timezone.now())
        roles = roles_from_claim(
            claims.get(settings.NBCLOUD_OIDC_ROLES_CLAIM), settings.NBCLOUD_OIDC_ROLE_PREFIX
        )
        sync_memberships(user, roles)
        return user


def _free_username(claims: dict) -> str:
    """`preferred_username` (else the e-mail address's local part), with -2, -3... when
    taken: an account made here by other means is never reused."""
    wanted = claims.get("preferred_username") or str(claims.get("email") or "").split("@")[0]
    base = re.sub(r"[^\w.@+-]", "", str(wanted or ""))[:140] or "sso-user"
    taken = get_user_model().objects.filter(username__startswith=base)
    names = set(taken.values_list("username", flat=True))
    name, n = base, 1
    while name in names:
        n += 1
        name = f"{base}-{n}"
    return name
