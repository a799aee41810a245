"""A project's notices (owners): where they go (email addresses and webhooks), a test
notice, and the delivery log, polled with htmx. Targets are validated by the API's own
serializer (webhook URLs that could reach the platform's network are refused there)."""

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from nbcloud.api.access import Ability
from nbcloud.api.errors import _flatten
from nbcloud.notices import services
from nbcloud.notices.api.views import NoticeTargetSerializer
from nbcloud.notices.models import SUBSCRIBABLE, Delivery, NoticeTarget

from .base import project_page

LOG_ROWS = 50


def _log(project):
    return (
        Delivery.objects.filter(target__project=project)
        .select_related("notice", "target")
        .order_by("-created_at", "-id")[:LOG_ROWS]
    )


def _page(request, project, **context):
    return render(
        request,
        "console/notices.html",
        {
            "targets": NoticeTarget.objects.filter(project=project).order_by("name"),
            "deliveries": _log(project),
            "kinds": [(k.value, k.label) for k in SUBSCRIBABLE],
            "errors": {},
            "values": {},
            **context,
        },
        status=400 if context.get("errors") else 200,
    )


def _target(project, target_id) -> NoticeTarget:
    target = NoticeTarget.objects.filter(project=project, pk=target_id).first()
    if target is None:
        raise Http404("No such notice target in this project.")
    return target


@project_page(Ability.MANAGE)
def notices(request, project, role):
    if request.method != "POST":
        return _page(request, project)
    kind = request.POST.get("type", "")
    data = {
        "name": request.POST.get("name", "").strip(),
        "type": kind,
        "kinds": request.POST.getlist("kinds"),
        "enabled": True,
    }
    field = "address" if kind == NoticeTarget.Type.EMAIL else "url"
    data[field] = request.POST.get(field, "").strip()
    body = NoticeTargetSerializer(data=data, context={"project": project, "request": request})
    if not body.is_valid():
        return _page(request, project, errors=_flatten(body.errors), values=request.POST)
    target = body.save()
    if target.type == NoticeTarget.Type.WEBHOOK:
        return _page(request, project, created=target, secret=target.secret_value)
    messages.success(request, f"Notices now go to {target.address} ({target.name}).")
    return redirect("console:notices", project.name)


@project_page(Ability.MANAGE)
def notice_deliveries(request, project, role):
    """The delivery log alone, for htmx's poll."""
    return render(request, "console/_deliveries.html", {"deliveries": _log(project)})


@require_POST
@project_page(Ability.MANAGE)
def notice_test(request, project, role, target_id):
    target = _target(project, target_id)
    services.send_test(target, request.user)
    messages.success(request, f"A test notice is on its way to {target.name}: see the log below.")
    return redirect("console:notices", project.name)


@require_POST
@project_page(Ability.MANAGE)
def notice_toggle(request, project, role, target_id):
    target = _target(project, target_id)
    target.enabled = not target.enabled
    target.save(update_fields=["enabled"])
    state = "on" if target.enabled else "off (nothing is sent to it)"
    messages.success(request, f"Notice target {target.name} is {state}.")
    return redirect("console:notices", project.name)


@require_POST
@project_page(Ability.MANAGE)
def notice_rotate(request, project, role, target_id):
    target = _target(project, target_id)
    if target.type != NoticeTarget.Type.WEBHOOK:
        raise Http404("Only webhooks have a signing secret.")
    secret = target.new_secret()
    target.save(update_fields=["sealed_secret"])
    return _page(request, project, created=target, secret=secret, rotated=True)


@project_page(Ability.MANAGE)
def notice_delete(request, project, role, target_id):
    target = _target(project, target_id)
    if request.method == "POST":
        target.delete()
        messages.success(request, f"Notice target {target.name} is removed.")
        return redirect("console:notices", project.name)
    return render(
        request,
        "console/confirm.html",
        {
            "what": f"the notice target {target.name}",
            "consequence": "Notices no longer go to it, and its delivery log is removed.",
            "back": reverse("console:notices", args=[project.name]),
        },
    )
