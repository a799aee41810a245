from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from nbcloud.api import access
from nbcloud.api.actors import actor_of
from nbcloud.api.pagination import KeysetPagination, Pagination
from nbcloud.api.views import GUEST, ProjectScopedViewSet
from nbcloud.monitoring import limits
from nbcloud.notebooks import services, spec
from nbcloud.notebooks.models import EditorLog, Notebook, NotebookGrant
from nbcloud.notebooks.states import State
from nbcloud.projects.models import WRITE_ROLES
from nbcloud.ssh.api.execute import exec_response
from nbcloud.ssh.api.serializers import ExecSerializer

from .serializers import (
    BackupSerializer,
    ForkSerializer,
    GrantSerializer,
    NotebookEventSerializer,
    NotebookSerializer,
    NotebookSpecSerializer,
    NotebookUpdateSerializer,
)


class NotebookViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ProjectScopedViewSet):
    serializer_class = NotebookSerializer
    lookup_value_regex = "[0-9a-f-]{36}"
    admits_notebook_guests = True
    pagination_class = KeysetPagination

    @property
    def paginator(self):
        """The list's (cursor pages); a notebook's events and backups page by number."""
        if not hasattr(self, "_paginator"):
            paging = self.pagination_class if self.action == "list" else Pagination
            self._paginator = paging()
        return self._paginator

    def get_queryset(self):
        # What a label-scoped token may not reach is absent: 404, and not listed;
        # someone with grants only sees the notebooks shared with them.
        notebooks = Notebook.objects.filter(project=self.project).exclude(state=State.DELETED)
        if self.role == GUEST:
            notebooks = access.granted_notebooks(self.request, notebooks)
        return access.visible_notebooks(self.request, notebooks).select_related(
            "project", "host", "created_by"
        )

    @extend_schema(
        parameters=[
            OpenApiParameter("state", str, enum=list(State.values)),
            OpenApiParameter("label_selector", str, description="e.g. team=vision,env!=prod"),
        ]
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    def filter_queryset(self, queryset):
        state = self.request.query_params.get("state")
        if state:
            if state not in State.values:
                raise serializers.ValidationError(
                    {"state": f"unknown state {state!r}; valid choices: {', '.join(State.values)}"}
                )
            queryset = queryset.filter(state=state)
        selector = self.request.query_params.get("label_selector")
        if selector:
            try:
                terms = spec.parse_label_selector(selector)
            except DjangoValidationError as exc:
                raise serializers.ValidationError({"label_selector": exc.messages}) from None
            queryset = spec.filter_by_labels(queryset, terms)
        return queryset

    @extend_schema(request=NotebookSpecSerializer, responses={201: NotebookSerializer})
    def create(self, request, *args, **kwargs):
        spec_serializer = NotebookSpecSerializer(
            data=request.data, context={"project": self.project}
        )
        spec_serializer.is_valid(raise_exception=True)
        fields = spec_serializer.to_model_fields()
        fields["labels"] = access.labels_for_new_notebook(request.auth, fields["labels"])
        notebook = services.create(
            self.project,
            fields,
            actor=actor_of(request),
            user=request.user,
        )
        return Response(self.get_serializer(notebook).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=NotebookUpdateSerializer, responses=NotebookSerializer)
    def partial_update(self, request, *args, **kwargs):
        changes = NotebookUpdateSerializer(data=request.data)
        changes.is_valid(raise_exception=True)
        notebook = self.get_object()
        if "labels" in changes.validated_data:
            access.check_labels_change(request.auth, changes.validated_data["labels"])
        notebook = services.update(notebook, changes.validated_data, actor=actor_of(request))
        return Response(self.get_serializer(notebook).data)

    def destroy(self, request, *args, **kwargs):
        notebook = services.delete(self.get_object(), actor=actor_of(request))
        return Response(self.get_serializer(notebook).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: NotebookSerializer})
    @action(detail=True, methods=["post"])
    def start(self, request, *args, **kwargs):
        notebook = services.start(self.get_object(), actor=actor_of(request))
        return Response(self.get_serializer(notebook).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: NotebookSerializer})
    @action(detail=True, methods=["post"])
    def stop(self, request, *args, **kwargs):
        notebook = services.stop(self.get_object(), actor=actor_of(request))
        return Response(self.get_serializer(notebook).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=NotebookEventSerializer(many=True))
    @action(detail=True, methods=["get"])
    def events(self, request, *args, **kwargs):
        notebook = self.get_object()
        page = self.paginate_queryset(notebook.events.all())
        return self.get_paginated_response(NotebookEventSerializer(page, many=True).data)

    @extend_schema(responses=BackupSerializer(many=True))
    @action(detail=True, methods=["get"])
    def backups(self, request, *args, **kwargs):
        notebook = self.get_object()
        page = self.paginate_queryset(notebook.backups.all())
        return self.get_paginated_response(BackupSerializer(page, many=True).data)

    @extend_schema(responses=BackupSerializer)
    @action(detail=True, methods=["get"], url_path=r"backups/(?P<backup_id>[0-9a-f-]{36})")
    def backup(self, request, backup_id, *args, **kwargs):
        return Response(BackupSerializer(self._backup(backup_id)).data)

    @extend_schema(request=ForkSerializer, responses={201: NotebookSerializer})
    @action(detail=True, methods=["post"], url_path=r"backups/(?P<backup_id>[0-9a-f-]{36})/fork")
    def fork(self, request, backup_id, *args, **kwargs):
        """A new notebook with this one's spec, starting from the backup's workspace."""
        backup = self._backup(backup_id)
        if self.role not in WRITE_ROLES:  # a grant on one notebook does not create others
            raise exceptions.PermissionDenied(
                "Forking creates a notebook: it needs the operator role on the project."
            )
        options = ForkSerializer(data=request.data)
        options.is_valid(raise_exception=True)
        notebook = services.fork(
            backup, actor=actor_of(request), user=request.user, name=options.validated_data["name"]
        )
        return Response(self.get_serializer(notebook).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={202: NotebookSerializer})
    @action(detail=True, methods=["post"])
    def datasync(self, request, *args, **kwargs):
        """Push the RW volumes of a running notebook now."""
        notebook = services.request_datasync(self.get_object(), actor=actor_of(request))
        return Response(self.get_serializer(notebook).data, status=status.HTTP_202_ACCEPTED)

    def _backup(self, backup_id):
        notebook = self.get_object()
        try:
            backup = notebook.backups.filter(pk=backup_id).first()
        except DjangoValidationError:  # 36 hex digits and dashes, yet not a UUID
            backup = None
        if backup is None:
            raise exceptions.NotFound(f"This notebook has no backup {backup_id}.")
        return backup

    @extend_schema(request=GrantSerializer, responses=GrantSerializer(many=True))
    @action(detail=True, methods=["get", "post"])
    def grants(self, request, *args, **kwargs):
        """Share this notebook: give a person a read or operator role on it."""
        notebook = self.get_object()
        if request.method == "POST":
            self._check_owner(notebook)
            grant = GrantSerializer(data=request.data)
            grant.is_valid(raise_exception=True)
            NotebookGrant.objects.update_or_create(
                notebook=notebook,
                user=grant.validated_data["user"],
                defaults={"role": grant.validated_data["role"], "granted_by": request.user},
            )
        grants = notebook.grants.select_related("user", "granted_by").order_by("user__username")
        status_code = status.HTTP_201_CREATED if request.method == "POST" else status.HTTP_200_OK
        return Response(GrantSerializer(grants, many=True).data, status=status_code)

    @extend_schema(
        request=None,
        responses={204: None},
        parameters=[OpenApiParameter("username", str, OpenApiParameter.PATH)],
    )
    @action(detail=True, methods=["delete"], url_path=r"grants/(?P<username>[^/]+)")
    def revoke(self, request, username, *args, **kwargs):
        notebook = self.get_object()
        self._check_owner(notebook)
        deleted, _ = notebook.grants.filter(user__username=username).delete()
        if not deleted:
            raise exceptions.NotFound(f"{username!r} has no grant on this notebook.")
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _check_owner(self, notebook) -> None:
        """Sharing is for the notebook's owner and the project's operators."""
        if self.role in WRITE_ROLES or (
            notebook.created_by_id == self.request.user.pk and self.role != GUEST
        ):
            return
        raise exceptions.PermissionDenied(
            "Only the notebook's owner or an operator of its project can share it."
        )

    @extend_schema(
        responses={200: {"type": "object"}},
        parameters=[
            OpenApiParameter(
                "since", str, description="ISO 8601 time, or seconds back (600); default 1 h"
            )
        ],
    )
    @action(detail=True, methods=["get"])
    def metrics(self, request, *args, **kwargs):
        """The notebook's samples (CPU, memory, GPUs, disk, network) of the last hour."""
        from nbcloud.monitoring.samples import series_response

        notebook = self.get_object()
        return Response(series_response(notebook, request.query_params.get("since")))

    @extend_schema(request=ExecSerializer, responses={(200, "application/x-ndjson"): str})
    @action(detail=True, methods=["post"])
    def exec(self, request, *args, **kwargs):
        """Run a command in the running notebook (its uid, /workspace, its environment):
        JSON lines {"stream", "data" (base64)} as output comes, then {"exit_code"}."""
        return exec_response(self.get_object(), request)

    @extend_schema(request=None, responses={200: NotebookSerializer})
    @action(detail=True, methods=["post"])
    def keepalive(self, request, *args, **kwargs):
        """Count the notebook as used now: postpones its idle stop."""
        return Response(self.get_serializer(limits.keepalive(self.get_object())).data)

    @extend_schema(
        responses={200: {"type": "object"}},
        parameters=[OpenApiParameter("tail", int, description="lines from the end (at most 5000)")],
    )
    @action(detail=True, methods=["get"])
    def logs(self, request, *args, **kwargs):
        """The editor's log as its host last shipped it (every few seconds while it runs)."""
        notebook = self.get_object()
        tail = request.query_params.get("tail", "200")
        if not tail.isdigit():
            raise serializers.ValidationError({"tail": f"{tail!r} is not a number of lines"})
        return Response(services.editor_log(notebook, min(int(tail), EditorLog.KEEP_LINES)))
