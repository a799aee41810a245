"""OVHcloud's AI API for notebooks, served by nbcloud's own views.

Each view here is a subclass of the view that serves the same thing in
nbcloud's API (/api/v1/...): it takes the project from the app token (OVH's
paths name no project), translates the request body to nbcloud's shape
(`shapes.*_in`), runs the native action, and translates its answer
(`shapes.*_out`) with the status code the `ovhai` SDK expects. Validation,
quota, tenancy, roles, label selectors and state changes are all decided by
the native code, so whatever it refuses is refused here, in OVH's error shape.
"""

import base64
import json

from django.http import QueryDict, StreamingHttpResponse
from rest_framework import exceptions, permissions, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from nbcloud.api.actors import actor_of
from nbcloud.api.authentication import BearerTokenAuthentication
from nbcloud.api.errors import exception_handler as native_exception_handler
from nbcloud.api.pagination import Pagination
from nbcloud.api.views import ProjectScopedMixin
from nbcloud.catalog.api.views import CapabilityView
from nbcloud.notebooks.api.serializers import NotebookSpecSerializer
from nbcloud.notebooks.api.views import NotebookViewSet
from nbcloud.notebooks.states import State
from nbcloud.projects.api.tokens import ApiTokenViewSet
from nbcloud.projects.api.views import QuotaView
from nbcloud.projects.models import WRITE_ROLES, ApiToken
from nbcloud.ssh import execution
from nbcloud.ssh import services as ssh_services

from . import shapes


def exception_handler(exc, context):
    """nbcloud's error answer in OVH's shape: `message` (+ `code`, `fields` in OVH's names).

    OVH answers 400 where nbcloud says 409 (an action the state does not allow).
    """
    response = native_exception_handler(exc, context)
    if response is None:
        return None
    body = dict(response.data)
    if "fields" in body:
        renamed = {shapes.field_path_out(path): msgs for path, msgs in body["fields"].items()}
        message = body["message"]
        for path, ovh_path in zip(body["fields"], renamed, strict=True):
            message = message.replace(f"{path}:", f"{ovh_path}:")
        body.update(fields=renamed, message=message)
    response.data = body
    if response.status_code == status.HTTP_409_CONFLICT:
        response.status_code = status.HTTP_400_BAD_REQUEST
    return response


def with_data(request, data) -> None:
    """Give the native action `data` as the request's body (what it would have parsed)."""
    request._full_data = data


class OvhView:
    """App tokens only (the token's project is the project); OVH's error shape; not in
    nbcloud's OpenAPI document."""

    authentication_classes = [BearerTokenAuthentication]
    schema = None

    def get_exception_handler(self):
        return exception_handler

    def get_paginated_response(self, data):
        page = self.paginator.page
        metadata = {
            "total": page.paginator.count,
            "currentPage": page.number,
            "pageCount": page.paginator.num_pages,
        }
        next_link = self.paginator.get_next_link()
        if next_link:
            metadata["links"] = {"next": next_link}
        return Response({"items": data, "metadata": metadata})


class TokenProjectMixin(OvhView):
    """The project of a project-scoped native view is the app token's."""

    def initial(self, request, *args, **kwargs):
        self.perform_authentication(request)
        if isinstance(request.auth, ApiToken):
            kwargs["project"] = request.auth.project.name
        super().initial(request, *args, **kwargs)


def _answer(response: Response, translate) -> Response:
    """The native answer (201, 202 or 200) as OVH's 200 with the translated model."""
    return Response(translate(response.data))


def _list(response: Response, translate) -> Response:
    response.data["items"] = [translate(item) for item in response.data["items"]]
    return response


def _no_content(_native: Response) -> Response:
    """OVH answers its actions and edits with 204 and no body."""
    return Response(status=status.HTTP_204_NO_CONTENT)


class NotebookView(TokenProjectMixin, NotebookViewSet):
    """/v1/notebook[/{id}[/...]]"""

    pagination_class = Pagination  # OVH's pages: by number, in the `sort` asked

    def initialize_request(self, request, *args, **kwargs):
        request.GET = _query(request.GET)
        return super().initialize_request(request, *args, **kwargs)

    def filter_queryset(self, queryset):
        queryset = super().filter_queryset(queryset)
        if self.action != "list":
            return queryset
        params = self.request.query_params
        states = params.getlist("statusState")
        unknown = sorted(set(states) - set(State.values))
        if unknown:
            raise serializers.ValidationError(
                {
                    "statusState": f"unknown state(s) {', '.join(unknown)}; valid choices: "
                    f"{', '.join(State.values)}"
                }
            )
        if states:
            queryset = queryset.filter(state__in=states)
        return queryset.order_by(*_ordering(params))

    def list(self, request, *args, **kwargs):
        return _list(super().list(request, *args, **kwargs), shapes.notebook_out)

    def retrieve(self, request, *args, **kwargs):
        return _answer(super().retrieve(request, *args, **kwargs), shapes.notebook_out)

    def create(self, request, *args, **kwargs):
        with_data(request, shapes.with_default_name(shapes.notebook_in(request.data)))
        return _answer(super().create(request, *args, **kwargs), shapes.notebook_out)

    def partial_update(self, request, *args, **kwargs):
        with_data(request, shapes.update_in(request.data))
        return _no_content(super().partial_update(request, *args, **kwargs))

    def label(self, request, *args, **kwargs):
        labels = shapes.label_in(request.data, self.get_object().labels)
        with_data(request, {"labels": labels})
        return _no_content(super().partial_update(request, *args, **kwargs))

    def destroy(self, request, *args, **kwargs):
        return _no_content(super().destroy(request, *args, **kwargs))

    def start(self, request, *args, **kwargs):
        return _no_content(super().start(request, *args, **kwargs))

    def stop(self, request, *args, **kwargs):
        return _no_content(super().stop(request, *args, **kwargs))

    def backups(self, request, *args, **kwargs):
        return _list(super().backups(request, *args, **kwargs), shapes.backup_out)

    def backup(self, request, *args, **kwargs):
        return _answer(super().backup(request, *args, **kwargs), shapes.backup_out)

    def fork(self, request, *args, **kwargs):
        with_data(request, {})
        return _answer(super().fork(request, *args, **kwargs), shapes.notebook_out)

    def exec_command(self, request, *args, **kwargs):
        """OVH's `GET /v1/notebook/{id}/exec?command=...&stdout=&stderr=`: the command runs
        in the notebook (its uid, /workspace, its environment, as the native exec and SSH
        run it) and its output streams back as plain text; the exit code follows in the
        last line, `exit code: N`. Interactive use (stdin, tty) is SSH's: `sshUrl`."""
        notebook = self.get_object()
        if self.role not in WRITE_ROLES:
            raise exceptions.PermissionDenied(
                f"Your role on this notebook is {self.role}: running commands needs operator."
            )
        params = request.query_params
        command = params.getlist("command")
        if not command or not command[0]:
            raise serializers.ValidationError(
                {"command": "give the program and its arguments: ?command=ls&command=-la"}
            )
        for flag in ("stdin", "tty"):
            if params.get(flag, "false").lower() == "true":
                raise serializers.ValidationError(
                    {
                        flag: f"{flag}=true needs an interactive session: ssh to the notebook's "
                        "sshUrl (ssh, scp, sftp, VS Code Remote-SSH)"
                    }
                )
        wanted = {name for name in ("stdout", "stderr") if params.get(name, "true") != "false"}
        login = ssh_services.Login(str(notebook.pk), actor_of(request))
        lines = execution.astream(login, request.META.get("REMOTE_ADDR", "?"), command, 600)
        response = StreamingHttpResponse(_plain(lines, wanted), content_type="text/plain")
        response["X-Accel-Buffering"] = "no"
        return response

    def datasync(self, request, *args, **kwargs):
        self.get_object()  # a notebook out of reach is a 404 before anything else
        direction = request.data.get("direction") if isinstance(request.data, dict) else None
        if direction != "push":
            raise serializers.ValidationError(
                {
                    "direction": f"{direction!r} is not available: nbcloud pulls volumes when a "
                    "notebook starts; ask for 'push' to save RW volumes now"
                }
            )
        response = super().datasync(request, *args, **kwargs)
        return Response(shapes.data_sync_out(response.data, direction))


async def _plain(lines, wanted: set[str]):
    """The native exec's JSON lines as OVH's plain output, then `exit code: N`."""
    async for line in lines:
        item = json.loads(line)
        if item.get("stream") in wanted:
            yield base64.b64decode(item["data"])
        elif "exit_code" in item:
            if item.get("error"):
                yield f"\n{item['error']}\n".encode()
            yield f"\nexit code: {item['exit_code']}\n".encode()


def _query(params: QueryDict) -> QueryDict:
    translated = QueryDict(mutable=True)
    for name, values in shapes.query_in(params).items():
        translated.setlist(name, values)
    return translated


def _ordering(params) -> list[str]:
    sort = params.get("sort") or "createdAt"
    order = params.get("order") or "asc"
    if sort not in shapes.SORT_FIELDS:
        raise serializers.ValidationError(
            {"sort": f"cannot sort by {sort!r}; valid choices: {', '.join(shapes.SORT_FIELDS)}"}
        )
    if order not in ("asc", "desc"):
        raise serializers.ValidationError({"order": f"{order!r} is not asc or desc"})
    field = shapes.SORT_FIELDS[sort]
    return [f"-{field}" if order == "desc" else field, "pk"]


class CommandView(TokenProjectMixin, ProjectScopedMixin, APIView):
    """POST /v1/notebook/command: the `nbc` command line for a NotebookSpec."""

    permission_classes = [permissions.IsAuthenticated]

    def post(self, request, *args, **kwargs):
        spec = shapes.notebook_in(request.data)
        checked = NotebookSpecSerializer(
            data=shapes.with_default_name(spec), context={"project": self.project}
        )
        checked.is_valid(raise_exception=True)
        validated = dict(checked.validated_data)
        validated["name"] = spec.get("name")
        validated["region"] = spec.get("region")
        return Response(shapes.command_out(validated))


class TokenView(TokenProjectMixin, ApiTokenViewSet):
    """/v1/token[/{id}[/renew]]"""

    def list(self, request, *args, **kwargs):
        return _list(super().list(request, *args, **kwargs), shapes.token_out)

    def retrieve(self, request, *args, **kwargs):
        return _answer(super().retrieve(request, *args, **kwargs), shapes.token_out)

    def create(self, request, *args, **kwargs):
        with_data(request, shapes.token_in(request.data))
        return _answer(super().create(request, *args, **kwargs), shapes.token_out)

    def renew(self, request, *args, **kwargs):
        with_data(request, {})
        return _answer(super().renew(request, *args, **kwargs), shapes.token_out)


class MeView(TokenProjectMixin, QuotaView):
    """GET /v1/me: who the token speaks for, in which project, with which role."""

    def get(self, request, *args, **kwargs):
        quota = super().get(request, self.project.name).data
        return Response(shapes.me_out(username=request.user.username, quota=quota))


class QuotaCapabilityView(TokenProjectMixin, QuotaView):
    """GET /v1/capabilities/quota"""

    def get(self, request, *args, **kwargs):
        return Response([shapes.quotas_out(super().get(request, self.project.name).data)])


class CapabilitiesView(OvhView, CapabilityView):
    """GET /v1/capabilities/{notebook/framework,notebook/editor,flavor}[/{id}]"""

    @staticmethod
    def translate(item: dict) -> dict:
        raise NotImplementedError

    def get(self, request, id: str | None = None):
        items = self.items()
        if id is not None:
            found = next((item for item in items if item["id"] == id), None)
            if found is None:
                raise exceptions.NotFound(
                    f"No {self.kind[:-1]} {id!r}; known: {', '.join(i['id'] for i in items)}."
                )
            return Response(self.translate(found))
        return Response([self.translate(item) for item in self.compatible(items)])

    def compatible(self, items: list[dict]) -> list[dict]:
        """The items OVH's compatibleWith* query parameter keeps (all, by default)."""
        return items


class FrameworkCapabilitiesView(CapabilitiesView):
    kind = "frameworks"
    translate = staticmethod(shapes.framework_out)

    def compatible(self, items):
        editor = self.request.query_params.get("compatibleWithEditor")
        return [f for f in items if editor in f["editors"]] if editor else items


class EditorCapabilitiesView(CapabilitiesView):
    kind = "editors"
    translate = staticmethod(shapes.editor_out)

    def compatible(self, items):
        framework = self.request.query_params.get("compatibleWithFramework")
        if not framework:
            return items
        frameworks = CapabilityView(kind="frameworks").items()
        editors = next((f["editors"] for f in frameworks if f["id"] == framework), [])
        return [e for e in items if e["id"] in editors]


class FlavorCapabilitiesView(CapabilitiesView):
    kind = "flavors"
    translate = staticmethod(shapes.flavor_out)


class CatchAllView(OvhView, APIView):
    """Anything else under the prefix: OVH's error shape, naming what is served."""

    authentication_classes = []
    permission_classes = []

    def initial(self, request, *args, **kwargs):
        raise exceptions.NotFound(
            f"No OVHcloud AI endpoint at {request.method} {request.path}: nbcloud serves "
            "/v1/me, /v1/notebook, /v1/capabilities and /v1/token (see its README)."
        )
