from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication

from nbcloud.api.errors import api_exception
from nbcloud.errors import NotAuthenticated
from nbcloud.projects.models import ApiToken


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
        try:
            token = ApiToken.for_value(value.strip())
        except NotAuthenticated as exc:
            raise api_exception(exc) from None
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
