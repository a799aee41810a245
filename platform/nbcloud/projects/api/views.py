from django.db.models import Count, Sum
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from nbcloud.api.access import visible_notebooks
from nbcloud.api.views import ProjectScopedMixin
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import QUOTA_STATES
from nbcloud.projects.models import ApiToken


class QuotaSerializer(serializers.Serializer):
    project = serializers.CharField()
    role = serializers.CharField()
    gpu = serializers.DictField(child=serializers.IntegerField())
    cpu = serializers.DictField(child=serializers.IntegerField())
    notebooks = serializers.DictField(child=serializers.IntegerField())


class QuotaView(ProjectScopedMixin, APIView):
    """What the project uses now against its limits."""

    @extend_schema(responses=QuotaSerializer)
    def get(self, request, project):
        active = Notebook.objects.filter(project=self.project, state__in=QUOTA_STATES)
        totals = active.aggregate(gpus=Sum("gpu"), cpus=Sum("cpu"), count=Count("pk"))
        from nbcloud.notebooks.api.serializers import MAX_CPUS, MAX_GPUS

        return Response(
            {
                "project": self.project.name,
                "role": self.role,
                "gpu": {
                    "limit": self.project.gpu_quota,
                    "used": totals["gpus"] or 0,
                    "max_per_notebook": MAX_GPUS,
                },
                "cpu": {"used": totals["cpus"] or 0, "max_per_notebook": MAX_CPUS},
                "notebooks": {"active": totals["count"]},
            }
        )


class ProjectView(ProjectScopedMixin, APIView):
    """The project: its quota, this month's cost to date and its budget.

    A token with a label selector sees the cost of the notebooks it matches
    only, and of the budget its state, not what the others spent.
    """

    @extend_schema(responses={200: {"type": "object"}})
    def get(self, request, project):
        from nbcloud.billing.services import budget_status, cost_to_date

        budget = budget_status(self.project)
        if _scoped(request):
            notebooks = visible_notebooks(request, Notebook.objects.filter(project=self.project))
            cost = cost_to_date(notebooks=notebooks)
            if budget is not None:
                budget = {k: v for k, v in budget.items() if k not in ("spent", "used_percent")}
        else:
            cost = cost_to_date(project=self.project)
        return Response(
            {
                "name": self.project.name,
                "role": self.role,
                "gpu_quota": self.project.gpu_quota,
                "cost_to_date": [c.as_dict() for c in cost],
                "budget": budget,
            }
        )


def _scoped(request) -> bool:
    return isinstance(request.auth, ApiToken) and bool(request.auth.label_selector)
