"""A project's pages besides its notebooks: usage and cost, quota, tokens, datastores and
members. Tokens and datastores are validated by the API's own serializers."""

import csv
import io

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count, Sum
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from nbcloud.api.access import Ability, may, visible_notebooks
from nbcloud.api.errors import _flatten
from nbcloud.billing import usage as billing_usage
from nbcloud.billing.services import budget_status, cost_to_date
from nbcloud.console.models import Invitation
from nbcloud.notebooks.api.serializers import MAX_CPUS, MAX_GPUS
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import QUOTA_STATES
from nbcloud.projects.api.datastores import DatastoreSerializer
from nbcloud.projects.api.tokens import ApiTokenCreateSerializer, ApiTokenRenewSerializer
from nbcloud.projects.models import KEEP, ApiToken, Datastore, Membership, Role

from .base import project_page

# Usage and cost.


def _usage_report(request, project) -> dict:
    notebooks = visible_notebooks(request, Notebook.objects.filter(project=project))
    params = {k: request.GET.get(k, "") for k in ("from", "to", "group_by")}
    try:
        report = billing_usage.report(project, params=params, notebooks=notebooks)
    except ValueError as exc:
        report = billing_usage.report(project, params={}, notebooks=notebooks)
        report["error"] = str(exc)
    return report


@project_page()
def usage(request, project, role):
    report = _usage_report(request, project)
    stack = "flavor" if request.GET.get("stack") == "flavor" else "notebook"
    chart = billing_usage.daily_cost(
        project,
        start=report["from"],
        end=report["to"],
        by=stack,
        notebooks=visible_notebooks(request, Notebook.objects.filter(project=project)),
    )
    return render(
        request,
        "console/usage.html",
        {
            "report": report,
            "columns": billing_usage.columns(report["group_by"]),
            "groups": list(billing_usage.GROUPS),
            "stack": stack,
            "chart": chart,
            "costs": cost_to_date(project=project),
            "budget": budget_status(project),
            "query": request.GET.urlencode(),
        },
    )


@project_page()
def usage_csv(request, project, role):
    report = _usage_report(request, project)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=billing_usage.columns(report["group_by"]))
    writer.writeheader()
    writer.writerows(report["rows"])
    response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
    name = f"{project.name}-usage-{report['from']:%Y%m%d}-{report['to']:%Y%m%d}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


# Quota.


@project_page()
def quota(request, project, role):
    active = Notebook.objects.filter(project=project, state__in=QUOTA_STATES)
    totals = active.aggregate(gpus=Sum("gpu"), cpus=Sum("cpu"), count=Count("pk"))
    gpus = totals["gpus"] or 0
    return render(
        request,
        "console/quota.html",
        {
            "gpu_used": gpus,
            "gpu_limit": project.gpu_quota,
            "gpu_left": max(project.gpu_quota - gpus, 0),
            "cpu_used": totals["cpus"] or 0,
            "active": totals["count"],
            "max_gpus": MAX_GPUS,
            "max_cpus": MAX_CPUS,
        },
    )


# Tokens.


def _tokens(project):
    return ApiToken.objects.filter(project=project).select_related("user").order_by("name", "pk")


@project_page(Ability.MANAGE)
def tokens(request, project, role):
    errors, value, created = {}, None, None
    if request.method == "POST":
        data = {
            "name": request.POST.get("name", "").strip(),
            "role": request.POST.get("role", ""),
            "label_selector": request.POST.get("label_selector", "").strip(),
        }
        if request.POST.get("expires_at"):
            data["expires_at"] = request.POST["expires_at"]
        body = ApiTokenCreateSerializer(data=data)
        if body.is_valid():
            fields = body.validated_data
            created, value = ApiToken.issue(
                project=project,
                user=request.user,
                name=fields["name"],
                role=fields["role"],
                label_selector=fields.get("label_selector", ""),
                expires_at=fields.get("expires_at"),
            )
        else:
            errors = _flatten(body.errors)
    return render(
        request,
        "console/tokens.html",
        {
            "tokens": _tokens(project),
            "errors": errors,
            "value": value,
            "created": created,
            "values": request.POST if errors else {},
        },
        status=400 if errors else 200,
    )


def _token(project, token_id) -> ApiToken:
    token = ApiToken.objects.filter(project=project, pk=token_id).first()
    if token is None:
        raise Http404("No such token in this project.")
    return token


@require_POST
@project_page(Ability.MANAGE)
def token_renew(request, project, role, token_id):
    token = _token(project, token_id)
    data = {"expires_at": request.POST["expires_at"]} if request.POST.get("expires_at") else {}
    body = ApiTokenRenewSerializer(data=data)
    if not body.is_valid():
        messages.error(
            request, f"{token.name}: {'; '.join(sum(_flatten(body.errors).values(), []))}"
        )
        return redirect("console:tokens", project.name)
    expires_at = body.validated_data.get("expires_at", KEEP)
    if expires_at is KEEP and token.is_expired:
        messages.error(request, f"{token.name} has expired: give a new expiry to renew it.")
        return redirect("console:tokens", project.name)
    value = token.renew(expires_at=expires_at)
    return render(
        request,
        "console/tokens.html",
        {
            "tokens": _tokens(project),
            "errors": {},
            "value": value,
            "created": token,
            "renewed": True,
            "values": {},
        },
    )


@project_page(Ability.MANAGE)
def token_delete(request, project, role, token_id):
    token = _token(project, token_id)
    if request.method == "POST":
        token.delete()
        messages.success(request, f"Token {token.name} is deleted: its value no longer works.")
        return redirect("console:tokens", project.name)
    return render(
        request,
        "console/confirm.html",
        {
            "what": f"the token {token.name}",
            "consequence": "Programs using it lose access at once.",
            "back": reverse("console:tokens", args=[project.name]),
        },
    )


# Datastores.

DATASTORE_FIELDS = (
    "alias",
    "type",
    "endpoint",
    "region",
    "access_key",
    "secret_key",
    "host",
    "username",
    "password",
    "ssh_private_key",
)


@project_page(Ability.MANAGE)
def datastores(request, project, role):
    errors = {}
    if request.method == "POST":
        data = {f: request.POST.get(f, "") for f in DATASTORE_FIELDS if request.POST.get(f, "")}
        body = DatastoreSerializer(data=data, context={"project": project})
        if body.is_valid():
            body.save()
            messages.success(request, f"Datastore {body.validated_data['alias']} is added.")
            return redirect("console:datastores", project.name)
        errors = _flatten(body.errors)
    secrets = {f for fields in Datastore.SECRET_FIELDS.values() for f in fields}
    return render(
        request,
        "console/datastores.html",
        {
            "datastores": Datastore.objects.filter(project=project).order_by("alias"),
            "errors": errors,
            # Secrets are never sent back, not even to the form that failed.
            "values": {k: v for k, v in request.POST.items() if k not in secrets} if errors else {},
        },
        status=400 if errors else 200,
    )


@project_page(Ability.MANAGE)
def datastore_delete(request, project, role, alias):
    datastore = Datastore.objects.filter(project=project, alias=alias).first()
    if datastore is None:
        raise Http404("No such datastore in this project.")
    if request.method == "POST":
        datastore.delete()
        messages.success(request, f"Datastore {alias} is removed.")
        return redirect("console:datastores", project.name)
    return render(
        request,
        "console/confirm.html",
        {
            "what": f"the datastore {alias}",
            "consequence": "Notebooks that mount it can no longer sync "
            "with it; the data in the store itself is untouched.",
            "back": reverse("console:datastores", args=[project.name]),
        },
    )


# Members and invitations.


def _owners(project) -> int:
    return Membership.objects.filter(project=project, role=Role.OWNER).count()


@project_page()
def members(request, project, role):
    from django.conf import settings

    link = None
    may_manage = may(role, Ability.MANAGE)
    if request.method == "POST":
        if not may_manage:
            raise PermissionDenied("Inviting members needs the owner role.")
        invite_role = request.POST.get("role", "")
        if invite_role not in Role.values:
            messages.error(request, f"Choose a role: {', '.join(Role.values)}.")
        else:
            invitation, code = Invitation.issue(
                project=project,
                role=invite_role,
                note=request.POST.get("note", "")[:200],
                created_by=request.user,
            )
            path = reverse("console:invitation", args=[code])
            link = f"{settings.NBCLOUD_PUBLIC_URL}{path}"
    return render(
        request,
        "console/members.html",
        {
            "memberships": Membership.objects.filter(project=project)
            .select_related("user")
            .order_by("user__username"),
            "invitations": Invitation.objects.filter(project=project).select_related("created_by")
            if may_manage
            else [],
            "roles": Role.values,
            "link": link,
        },
    )


@require_POST
@project_page(Ability.MANAGE)
def member_change(request, project, role, user_id):
    membership = (
        Membership.objects.filter(project=project, user_id=user_id).select_related("user").first()
    )
    if membership is None:
        raise Http404("No such member of this project.")
    new_role = request.POST.get("role", "")
    remove = request.POST.get("remove") == "1"
    with transaction.atomic():
        losing_owner = membership.role == Role.OWNER and (remove or new_role != Role.OWNER)
        if losing_owner and _owners(project) <= 1:
            messages.error(
                request,
                f"{membership.user.username} is the project's last owner: "
                "make someone else owner first.",
            )
        elif remove:
            membership.delete()
            messages.success(request, f"{membership.user.username} is no longer a member.")
        elif new_role in Role.values:
            # A role set by hand is the owner's: single sign-on no longer changes it.
            membership.role, membership.from_sso = new_role, False
            membership.save(update_fields=["role", "from_sso"])
            messages.success(request, f"{membership.user.username} is now {new_role}.")
        else:
            messages.error(request, f"Choose a role: {', '.join(Role.values)}.")
    return redirect("console:members", project.name)


@require_POST
@project_page(Ability.MANAGE)
def invitation_delete(request, project, role, invitation_id):
    deleted, _ = Invitation.objects.filter(project=project, pk=invitation_id).delete()
    if not deleted:
        raise Http404("No such invitation.")
    messages.success(request, "The invitation is withdrawn: its link no longer works.")
    return redirect("console:members", project.name)
