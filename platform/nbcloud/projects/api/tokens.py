"""App tokens, managed through the API (like OVHcloud AI's `ovhai token`).

    POST   /projects/{p}/tokens/              name, role, [label_selector], [expires_at]
    GET    /projects/{p}/tokens/              the project's tokens, never their values
    GET    /projects/{p}/tokens/{id}/
    DELETE /projects/{p}/tokens/{id}/         the value stops working at once
    POST   /projects/{p}/tokens/{id}/renew/   a new value; the old one stops working

A token's value is in the answer to its creation and to each renewal, and
nowhere else: only its SHA-256 is stored. Managing tokens needs the operator
role; a token that calls these endpoints sees and gives out only tokens no
more powerful than itself (`nbcloud.api.access.token_covers`).
"""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, mixins, permissions, serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from nbcloud.api.access import manageable_tokens, token_covers
from nbcloud.api.views import ProjectScopedViewSet
from nbcloud.projects.models import (
    KEEP,
    TOKEN_ROLES,
    WRITE_ROLES,
    ApiToken,
    format_selector,
    parse_token_selector,
)


class ApiTokenSerializer(serializers.ModelSerializer):
    project = serializers.CharField(source="project.name", read_only=True)
    user = serializers.CharField(source="user.username", read_only=True)
    expired = serializers.BooleanField(source="is_expired", read_only=True)

    class Meta:
        model = ApiToken
        fields = [
            "id",
            "project",
            "name",
            "role",
            "label_selector",
            "user",
            "key_prefix",
            "created_at",
            "expires_at",
            "expired",
            "last_used_at",
        ]
        read_only_fields = fields


class ApiTokenValueSerializer(ApiTokenSerializer):
    value = serializers.CharField(
        read_only=True, help_text="The token: shown in this answer only, never again."
    )

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "value"]
        read_only_fields = fields


def _future(value):
    if value is not None and value <= timezone.now():
        raise serializers.ValidationError(
            f"{value.isoformat()} is not in the future (now: {timezone.now().isoformat()})"
        )
    return value


class _StrictSerializer(serializers.Serializer):
    def validate(self, attrs):
        unknown = set(getattr(self, "initial_data", {}) or {}) - set(self.fields)
        if unknown:
            raise serializers.ValidationError(
                f"unknown field(s) {', '.join(sorted(unknown))}; "
                f"valid fields: {', '.join(sorted(self.fields))}"
            )
        return attrs


class ApiTokenCreateSerializer(_StrictSerializer):
    name = serializers.CharField(max_length=100)
    role = serializers.ChoiceField(choices=TOKEN_ROLES)
    label_selector = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=1000,
        help_text="e.g. team=vision,env!=prod: the token reaches only the notebooks whose labels "
        "match, and notebooks it creates receive the `=` labels.",
    )
    expires_at = serializers.DateTimeField(
        required=False,
        allow_null=True,
        help_text="ISO 8601, in the future; null or left out: never (or, for a token that "
        "expires, when the calling token expires).",
    )

    def validate_label_selector(self, value: str) -> str:
        try:
            return format_selector(parse_token_selector(value))
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None

    def validate_expires_at(self, value):
        return _future(value)


class ApiTokenRenewSerializer(_StrictSerializer):
    expires_at = serializers.DateTimeField(
        required=False,
        allow_null=True,
        help_text="ISO 8601, in the future; null: never; left out: unchanged.",
    )

    def validate_expires_at(self, value):
        return _future(value)


class TokenManagerPermission(permissions.BasePermission):
    message = "Managing API tokens needs the operator role; your role on this project is read-only."

    def has_permission(self, request, view) -> bool:
        return view.role in WRITE_ROLES


class ApiTokenViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    ProjectScopedViewSet,
):
    """The project's app tokens."""

    serializer_class = ApiTokenSerializer
    permission_classes = [permissions.IsAuthenticated, TokenManagerPermission]
    lookup_value_regex = "[0-9]+"

    def get_queryset(self):
        tokens = ApiToken.objects.filter(project=self.project).select_related("project", "user")
        return manageable_tokens(self.request.auth, tokens).order_by("name", "pk")

    def _answer(self, token: ApiToken, value: str) -> Response:
        token.value = value
        return Response(ApiTokenValueSerializer(token).data, status=status.HTTP_201_CREATED)

    def _check_power(self, terms, expires_at) -> None:
        reason = token_covers(self.request.auth, terms, expires_at)
        if reason:
            raise exceptions.PermissionDenied(reason)

    @extend_schema(request=ApiTokenCreateSerializer, responses={201: ApiTokenValueSerializer})
    def create(self, request, *args, **kwargs):
        data = ApiTokenCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = data.validated_data
        selector = fields.get("label_selector", "")
        if "expires_at" in fields:
            expires_at = fields["expires_at"]
        else:
            # A token that expires gives out tokens that expire with it.
            auth = request.auth
            expires_at = auth.expires_at if isinstance(auth, ApiToken) else None
        self._check_power(parse_token_selector(selector), expires_at)
        token, value = ApiToken.issue(
            project=self.project,
            user=request.user,
            name=fields["name"],
            role=fields["role"],
            label_selector=selector,
            expires_at=expires_at,
        )
        return self._answer(token, value)

    @extend_schema(request=ApiTokenRenewSerializer, responses={201: ApiTokenValueSerializer})
    @action(detail=True, methods=["post"])
    def renew(self, request, *args, **kwargs):
        """A new value for the token; the old one stops working at once."""
        token = self.get_object()
        data = ApiTokenRenewSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        expires_at = data.validated_data.get("expires_at", KEEP)
        resulting = token.expires_at if expires_at is KEEP else expires_at
        if resulting is not None and resulting <= timezone.now():
            raise serializers.ValidationError(
                {
                    "expires_at": f"token {token.name!r} expired at {resulting.isoformat()}: "
                    "give a new expires_at (or null for none) to renew it"
                }
            )
        self._check_power(token.selector_terms, resulting)
        value = token.renew(expires_at=expires_at)
        return self._answer(token, value)
