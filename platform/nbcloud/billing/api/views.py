from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from nbcloud.api.views import ProjectScopedMixin
from nbcloud.billing import usage
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import State

from .renderers import CSVRenderer

PARAMETERS = [
    OpenApiParameter("from", str, description="date or datetime (default: start of the month)"),
    OpenApiParameter("to", str, description="date or datetime, excluded (default: now)"),
    OpenApiParameter("group_by", str, enum=list(usage.GROUPS)),
    OpenApiParameter("format", str, enum=["json", "csv"]),
]


class UsageView(ProjectScopedMixin, APIView):
    """Billed minutes, unit-minutes and cost, grouped by notebook, day or flavor.

    A token with a label selector sees only the minutes of the notebooks it matches.
    """

    renderer_classes = [JSONRenderer, BrowsableAPIRenderer, CSVRenderer]

    def notebook(self):
        return None

    def visible(self):
        """The project's notebooks this caller may reach (a label-scoped token: its matches).

        Deleted ones included: their minutes were billed, and a token that
        reaches a notebook's labels reached it while it lived.
        """
        from nbcloud.api.access import visible_notebooks

        return visible_notebooks(self.request, Notebook.objects.filter(project=self.project))

    @extend_schema(parameters=PARAMETERS, responses={200: {"type": "object"}})
    def get(self, request, **kwargs):
        try:
            result = usage.report(
                self.project,
                params=request.query_params,
                notebook=self.notebook(),
                notebooks=self.visible(),
            )
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None
        return Response(result)


class NotebookUsageView(UsageView):
    def notebook(self):
        from django.shortcuts import get_object_or_404

        from nbcloud.api.access import visible_notebooks

        notebooks = Notebook.objects.filter(project=self.project).exclude(state=State.DELETED)
        return get_object_or_404(visible_notebooks(self.request, notebooks), pk=self.kwargs["pk"])
