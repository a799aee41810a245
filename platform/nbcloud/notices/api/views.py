"""Notice targets and their delivery log, for the project's owners (docs/notices.md).

    POST   /projects/{p}/notice-targets/            {"name", "type": "email", "address", ["kinds"]}
                                                     {"name", "type": "webhook", "url", ["kinds"]}
    GET    /projects/{p}/notice-targets/[{id}/]
    PATCH  /projects/{p}/notice-targets/{id}/       name, kinds, enabled, address or url
    DELETE /projects/{p}/notice-targets/{id}/
    POST   /projects/{p}/notice-targets/{id}/test/           a test notice to this target
    POST   /projects/{p}/notice-targets/{id}/rotate-secret/  a new signing secret
    GET    /projects/{p}/notice-deliveries/[?target={id}]    the delivery log, newest first

A webhook's signing secret is in the answer to its creation and to each rotation,
and nowhere else. Only the project's owners manage notices: other members, app
tokens and people with a notebook shared get 403 (or 404 without a role).
"""

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, permissions, serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from nbcloud.api.access import Ability, may
from nbcloud.api.views import ProjectScopedViewSet
from nbcloud.notices import services, webhooks
from nbcloud.notices.models import SUBSCRIBABLE, Delivery, NoticeTarget
from nbcloud.projects.models import ApiToken


class NoticeTargetSerializer(serializers.ModelSerializer):
    kinds = serializers.ListField(
        child=serializers.ChoiceField(choices=[k.value for k in SUBSCRIBABLE]),
        required=False,
        help_text="The kinds of notice sent here; empty or left out: every kind.",
    )

    class Meta:
        model = NoticeTarget
        fields = ["id", "name", "type", "address", "url", "kinds", "enabled", "created_at"]
        read_only_fields = ["id", "created_at"]

    def validate(self, attrs):
        unknown = set(getattr(self, "initial_data", {}) or {}) - set(self.fields)
        if unknown:
            raise serializers.ValidationError(
                f"unknown field(s) {', '.join(sorted(unknown))}; "
                f"valid fields: {', '.join(sorted(self.fields))}"
            )
        current = self.instance
        kind = attrs.get("type", current.type if current else None)
        if current is not None and "type" in attrs and attrs["type"] != current.type:
            raise serializers.ValidationError(
                {"type": "a target keeps its type: delete it and add one of the other type"}
            )
        needed, unused = (
            ("address", "url") if kind == NoticeTarget.Type.EMAIL else ("url", "address")
        )
        if not attrs.get(needed, getattr(current, needed, "")):
            raise serializers.ValidationError({needed: f"required for a {kind} target"})
        if attrs.get(unused):
            raise serializers.ValidationError({unused: f"not used by a {kind} target"})
        if kind == NoticeTarget.Type.EMAIL and not settings.EMAIL_HOST and current is None:
            raise serializers.ValidationError(
                {
                    "type": "this platform sends no email: its operator has not set EMAIL_HOST; "
                    "use a webhook"
                }
            )
        if "url" in attrs:
            try:
                webhooks.check(attrs["url"])
            except webhooks.Refused as exc:
                raise serializers.ValidationError({"url": str(exc)}) from None
            attrs["url"] = attrs["url"].strip()
        if "kinds" in attrs:
            attrs["kinds"] = sorted(set(attrs["kinds"]))
        project = self.context["project"]
        name = attrs.get("name")
        clash = NoticeTarget.objects.filter(project=project, name=name)
        if name and clash.exclude(pk=getattr(current, "pk", None)).exists():
            raise serializers.ValidationError(
                {"name": f"project {project.name} already has a notice target {name!r}"}
            )
        return attrs

    def create(self, validated):
        target = NoticeTarget(
            project=self.context["project"], created_by=self.context["request"].user, **validated
        )
        if target.type == NoticeTarget.Type.WEBHOOK:
            target.secret_value = target.new_secret()
        target.save()
        return target


class NoticeTargetSecretSerializer(NoticeTargetSerializer):
    secret = serializers.CharField(
        source="secret_value",
        read_only=True,
        help_text="The webhook's signing secret: shown in this answer only, never again.",
    )

    class Meta(NoticeTargetSerializer.Meta):
        fields = [*NoticeTargetSerializer.Meta.fields, "secret"]


class DeliverySerializer(serializers.ModelSerializer):
    target = serializers.IntegerField(source="target_id", read_only=True)
    target_name = serializers.CharField(source="target.name", read_only=True)
    notice = serializers.UUIDField(source="notice_id", read_only=True)
    kind = serializers.CharField(source="notice.kind", read_only=True)
    subject = serializers.CharField(source="notice.subject", read_only=True)

    class Meta:
        model = Delivery
        fields = [
            "id",
            "notice",
            "kind",
            "subject",
            "target",
            "target_name",
            "state",
            "attempts",
            "response_status",
            "last_error",
            "created_at",
            "last_attempt_at",
            "next_attempt_at",
            "delivered_at",
        ]
        read_only_fields = fields


class OwnerPermission(permissions.BasePermission):
    """The project's owners, signed in as themselves: never an app token, which acts for a
    program."""

    message = (
        "Notices are managed by the project's owners, signed in (not with an app token); "
        "your role on this project is not owner."
    )

    def has_permission(self, request, view) -> bool:
        return not isinstance(request.auth, ApiToken) and may(view.role, Ability.MANAGE)


class OwnerScopedViewSet(ProjectScopedViewSet):
    permission_classes = [permissions.IsAuthenticated, OwnerPermission]

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "project": self.project}


class NoticeTargetViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    OwnerScopedViewSet,
):
    """The project's notice targets: where notices go."""

    serializer_class = NoticeTargetSerializer
    lookup_value_regex = "[0-9]+"
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        return NoticeTarget.objects.filter(project=self.project).order_by("name", "pk")

    @extend_schema(request=NoticeTargetSerializer, responses={201: NoticeTargetSecretSerializer})
    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        target = serializer.save()
        if not hasattr(target, "secret_value"):
            return Response(NoticeTargetSerializer(target).data, status=status.HTTP_201_CREATED)
        return Response(NoticeTargetSecretSerializer(target).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={202: DeliverySerializer})
    @action(detail=True, methods=["post"])
    def test(self, request, *args, **kwargs):
        """Send a test notice to this target; its delivery shows in the log."""
        delivery = services.send_test(self.get_object(), request.user)
        return Response(DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={201: NoticeTargetSecretSerializer})
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request, *args, **kwargs):
        """A new signing secret for a webhook; the old one stops signing at once."""
        target = self.get_object()
        if target.type != NoticeTarget.Type.WEBHOOK:
            raise serializers.ValidationError(
                {"type": f"{target.name!r} is an email target: only webhooks have a secret"}
            )
        target.secret_value = target.new_secret()
        target.save(update_fields=["sealed_secret"])
        return Response(NoticeTargetSecretSerializer(target).data, status=status.HTTP_201_CREATED)


@extend_schema(
    parameters=[OpenApiParameter("target", int, description="Only this target's deliveries.")]
)
class DeliveryViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OwnerScopedViewSet):
    """The delivery log: each notice to each target, newest first."""

    serializer_class = DeliverySerializer

    def get_queryset(self):
        deliveries = Delivery.objects.filter(target__project=self.project).select_related(
            "notice", "target"
        )
        target = self.request.query_params.get("target")
        if target is not None:
            if not target.isdigit():
                raise serializers.ValidationError({"target": f"{target!r} is not a target id"})
            deliveries = deliveries.filter(target_id=int(target))
        return deliveries.order_by("-created_at", "-id")
