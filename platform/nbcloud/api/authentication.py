from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from nbcloud.projects.models import ApiToken, hash_token


def token_for_value(value: str) -> ApiToken:
    """The live token with this value, or AuthenticationFailed saying why not."""
    if not value:
        raise exceptions.AuthenticationFailed("Bearer token missing after 'Bearer'.")
    token = (
        ApiToken.objects.select_related("user", "project")
        .filter(key_hash=hash_token(value))
        .first()
    )
    if token is None:
        raise exceptions.AuthenticationFailed("Unknown API token.")
    if token.is_expired:
        raise exceptions.AuthenticationFailed(
            f"API token {token.name!r} expired at {token.expires_at.isoformat()}."
        )
    if not token.user.is_active:
        raise exceptions.AuthenticationFailed("The token's user is disabled.")
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    return token


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <token>` with a project API token.

    request.user is the token's user and request.auth the ApiToken, whose
    project and role bound what the request may reach.
    """

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode(errors="replace")
        scheme, _, value = header.partition(" ")
        if scheme != self.keyword:
            return None
        token = token_for_value(value.strip())
        return token.user, token

    def authenticate_header(self, request) -> str:
        return self.keyword


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """Describes the bearer token in the OpenAPI document (and the docs' Authorize)."""

    target_class = BearerTokenAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A project API token (`manage.py createapitoken`).",
        }
