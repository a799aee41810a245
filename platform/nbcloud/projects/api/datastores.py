"""Datastores: where a project's volumes come from (OVH's `ovhai datastore`).

    POST   /projects/{p}/datastores/   {"alias", "type": "s3", "endpoint", "region", "access_key", "secret_key"}
                                        {"alias", "type": "git", "host", "username", "password" | "ssh_private_key"}
    GET    /projects/{p}/datastores/[{alias}/]
    DELETE /projects/{p}/datastores/{alias}/

Secrets are write-only: sealed at rest, never in an answer.
"""

from rest_framework import mixins, serializers, status
from rest_framework.response import Response

from nbcloud.api.views import ProjectScopedViewSet
from nbcloud.projects.models import Datastore

REQUIRED = {
    "s3": ("access_key", "secret_key"),
    "git": ("host",),
}


class DatastoreSerializer(serializers.ModelSerializer):
    secret_key = serializers.CharField(write_only=True, required=False, trim_whitespace=False)
    password = serializers.CharField(write_only=True, required=False, trim_whitespace=False)
    ssh_private_key = serializers.CharField(write_only=True, required=False, trim_whitespace=False)

    class Meta:
        model = Datastore
        fields = [
            "alias",
            "type",
            "endpoint",
            "region",
            "access_key",
            "host",
            "username",
            "created_at",
            "secret_key",
            "password",
            "ssh_private_key",
        ]
        read_only_fields = ["created_at"]

    def validate(self, attrs):
        kind = attrs["type"]
        missing = [f for f in REQUIRED[kind] if not attrs.get(f)]
        if kind == "git" and attrs.get("username") and not attrs.get("password"):
            missing.append("password")
        if missing:
            raise serializers.ValidationError(
                {f: f"required for a {kind} datastore" for f in missing}
            )
        unrelated = {
            "s3": ("host", "username", "password", "ssh_private_key"),
            "git": ("endpoint", "region", "access_key", "secret_key"),
        }[kind]
        extra = [f for f in unrelated if attrs.get(f)]
        if extra:
            raise serializers.ValidationError({f: f"not used by a {kind} datastore" for f in extra})
        project = self.context["project"]
        if Datastore.objects.filter(project=project, alias=attrs["alias"]).exists():
            raise serializers.ValidationError(
                {"alias": f"project {project.name} already has a datastore {attrs['alias']!r}"}
            )
        return attrs

    def create(self, validated):
        secrets = {
            f: validated.pop(f, "")
            for f in Datastore.SECRET_FIELDS["s3"] + Datastore.SECRET_FIELDS["git"]
        }
        datastore = Datastore(project=self.context["project"], **validated)
        datastore.set_secrets(secrets)
        datastore.full_clean(exclude=["sealed_secrets"])
        datastore.save()
        return datastore


class DatastoreViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, ProjectScopedViewSet
):
    serializer_class = DatastoreSerializer
    lookup_field = "alias"

    def get_queryset(self):
        return Datastore.objects.filter(project=self.project)

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "project": self.project}

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        serializer.save()
        return Response(serializer.data, status=status.HTTP_201_CREATED)
