"""The Notebooks pages: the live list, the New notebook form, one notebook's page and its
actions. Every action calls the same service the API's action calls, after the same checks
(nbcloud.api.access), so the console can do nothing the API would refuse."""

from django.contrib import messages
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Sum
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST
from rest_framework.exceptions import ValidationError

from nbcloud.api import access
from nbcloud.api.access import Ability
from nbcloud.api.errors import _flatten
from nbcloud.billing.services import cost_to_date, costs_to_date, price_for
from nbcloud.catalog.services import catalog
from nbcloud.errors import DomainError, QuotaExceeded
from nbcloud.monitoring.samples import dashboard_url, series_response
from nbcloud.notebooks import services, spec
from nbcloud.notebooks.api.serializers import MAX_CPUS, MAX_GPUS, NotebookSpecSerializer
from nbcloud.notebooks.models import Notebook, NotebookGrant
from nbcloud.notebooks.states import ACTIONS, QUOTA_STATES, State

from .base import project_page
from .editor_logs import editor_logs

# States in which a row is about to change by itself: the list polls faster.
MOVING_STATES = frozenset(
    {State.QUEUED, State.STARTING, State.STOPPING, State.RESTARTING, State.DELETING}
)
FAST_POLL, SLOW_POLL = 2, 15  # seconds


def actor(request) -> str:
    return request.user.username


def _notebooks(request, project):
    notebooks = Notebook.objects.filter(project=project).exclude(state=State.DELETED)
    return access.visible_notebooks(request, notebooks)


def get_notebook(request, project, notebook_id) -> Notebook:
    try:
        notebook = _notebooks(request, project).filter(pk=notebook_id).first()
    except DjangoValidationError:  # not a UUID
        notebook = None
    if notebook is None:
        raise Http404("No such notebook in this project.")
    return notebook


def _filters(request, project) -> tuple[dict, list, str]:
    """The list's notebooks after `?state=` and `?label=` (a label selector), and any error."""
    state = request.GET.get("state", "")
    selector = request.GET.get("label", "").strip()
    notebooks = _notebooks(request, project).select_related("created_by").order_by("name", "pk")
    error = ""
    if state in State.values:
        notebooks = notebooks.filter(state=state)
    if selector:
        try:
            notebooks = spec.filter_by_labels(notebooks, spec.parse_label_selector(selector))
        except DjangoValidationError as exc:
            error = f"Label filter: {' '.join(exc.messages)}"
    return {"state": state, "label": selector}, list(notebooks), error


def _rows_context(request, project) -> dict:
    filters, notebooks, error = _filters(request, project)
    costs = costs_to_date(notebooks)
    for notebook in notebooks:
        notebook.costs = costs.get(notebook.pk, [])
        notebook.can = {action: notebook.state in ACTIONS[action] for action in ACTIONS}
    moving = any(n.state in MOVING_STATES for n in notebooks)
    query = "&".join(f"{k}={v}" for k, v in filters.items() if v)
    return {
        "notebooks": notebooks,
        "filters": filters,
        "filter_error": error,
        "poll": FAST_POLL if moving else SLOW_POLL,
        "query": query,
        "states": State.values,
    }


@project_page()
def notebook_list(request, project, role):
    context = _rows_context(request, project)
    context["any_notebook"] = bool(context["notebooks"]) or _notebooks(request, project).exists()
    return render(request, "console/notebooks.html", context)


@require_GET
@project_page()
def notebook_rows(request, project, role):
    """The table's body alone: what the list polls (one query for the rows, two for costs)."""
    return render(request, "console/_notebook_rows.html", _rows_context(request, project))


def _back(request, default: str) -> str:
    """A page of this site to go back to: a path (`redirect` would take "1" for a view name)."""
    target = request.POST.get("next", "")
    if target.startswith("/") and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}
    ):
        return target
    return default


def _act(request, project, notebook_id, action: str, done: str):
    notebook = get_notebook(request, project, notebook_id)
    try:
        getattr(services, action)(notebook, actor=actor(request))
    except DomainError as exc:
        messages.error(request, f"{notebook.name}: {exc.message}")
    else:
        messages.success(request, f"{notebook.name}: {done}")
    return redirect(_back(request, reverse("console:notebooks", args=[project.name])))


@require_POST
@project_page(Ability.OPERATE)
def notebook_start(request, project, role, notebook_id):
    return _act(request, project, notebook_id, "start", "start requested.")


@require_POST
@project_page(Ability.OPERATE)
def notebook_stop(request, project, role, notebook_id):
    return _act(request, project, notebook_id, "stop", "stop requested; the workspace is saved.")


@project_page(Ability.OPERATE)
def notebook_delete(request, project, role, notebook_id):
    """GET asks for confirmation; POST deletes."""
    if request.method == "POST":
        return _act(request, project, notebook_id, "delete", "delete requested.")
    notebook = get_notebook(request, project, notebook_id)
    return render(request, "console/notebook_delete.html", {"notebook": notebook})


# One notebook.


def _detail_context(request, project, notebook) -> dict:
    return {
        "notebook": notebook,
        "can": {action: notebook.state in ACTIONS[action] for action in ACTIONS},
        "costs": cost_to_date(notebook=notebook),
        "moving": notebook.state in MOVING_STATES,
        "poll": FAST_POLL if notebook.state in MOVING_STATES else SLOW_POLL,
        "grafana_url": dashboard_url(notebook),
    }


@project_page()
def notebook_detail(request, project, role, notebook_id):
    notebook = get_notebook(request, project, notebook_id)
    context = _detail_context(request, project, notebook)
    context.update(
        events=notebook.events.order_by("-at", "-id")[:100],
        backups=notebook.backups.order_by("-created_at")[:20],
        grants=notebook.grants.select_related("user").order_by("user__username"),
        may_share=may_share(request, role, notebook),
    )
    return render(request, "console/notebook.html", context)


@require_GET
@project_page()
def notebook_status(request, project, role, notebook_id):
    """The state panel alone, polled by the notebook's page."""
    notebook = get_notebook(request, project, notebook_id)
    return render(
        request, "console/_notebook_status.html", _detail_context(request, project, notebook)
    )


@require_GET
@project_page()
def notebook_logs(request, project, role, notebook_id):
    notebook = get_notebook(request, project, notebook_id)
    tail = request.GET.get("tail", "200")
    tail = min(int(tail), 5000) if tail.isdigit() else 200
    return JsonResponse({"logs": editor_logs(notebook, tail)})


@require_GET
@project_page()
def notebook_metrics(request, project, role, notebook_id):
    notebook = get_notebook(request, project, notebook_id)
    try:
        body = series_response(notebook, request.GET.get("since"))
    except ValidationError as exc:
        return JsonResponse({"code": "invalid", "fields": _flatten(exc.detail)}, status=400)
    for sample in body["samples"]:
        sample["at"] = sample["at"].timestamp()
    return JsonResponse(body)


@require_POST
@project_page(Ability.OPERATE)
def notebook_fork(request, project, role, notebook_id, backup_id):
    notebook = get_notebook(request, project, notebook_id)
    try:
        backup = notebook.backups.filter(pk=backup_id).first()
    except DjangoValidationError:
        backup = None
    if backup is None:
        raise Http404("This notebook has no such backup.")
    try:
        fork = services.fork(backup, actor=actor(request), user=request.user)
    except DomainError as exc:
        messages.error(request, f"Fork of {notebook.name}: {exc.message}")
        return redirect("console:notebook", project.name, notebook.pk)
    messages.success(
        request, f"{fork.name} forked from the backup of {backup.created_at:%Y-%m-%d %H:%M}."
    )
    return redirect("console:notebook", project.name, fork.pk)


def may_share(request, role, notebook) -> bool:
    """The API's rule: the notebook's creator, or an operator (or owner) of its project."""
    return access.may(role, Ability.OPERATE) or notebook.created_by_id == request.user.pk


@require_POST
@project_page()
def notebook_share(request, project, role, notebook_id):
    from django.contrib.auth import get_user_model

    notebook = get_notebook(request, project, notebook_id)
    if not may_share(request, role, notebook):
        from django.core.exceptions import PermissionDenied

        raise PermissionDenied(
            "Only the notebook's owner or an operator of its project can share it."
        )
    username = request.POST.get("username", "").strip()
    grant_role = request.POST.get("role", "")
    revoke = request.POST.get("revoke") == "1"
    if "\x00" in username:  # no user has one, and PostgreSQL cannot compare it
        messages.error(request, "A user name has no NUL character.")
        return redirect("console:notebook", project.name, notebook.pk)
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if revoke:
        NotebookGrant.objects.filter(notebook=notebook, user__username=username).delete()
        messages.success(request, f"{username} no longer has a grant on {notebook.name}.")
    elif user is None:
        messages.error(request, f"No user named {username!r}: they must have an account first.")
    elif grant_role not in ("read", "operator"):
        messages.error(request, "Choose the read or operator role.")
    else:
        NotebookGrant.objects.update_or_create(
            notebook=notebook, user=user, defaults={"role": grant_role, "granted_by": request.user}
        )
        messages.success(request, f"{notebook.name} is shared with {username} ({grant_role}).")
    return redirect("console:notebook", project.name, notebook.pk)


# The New notebook form.

# Where the API's field paths are shown on the form.
FIELD_OF = {
    "name": "name",
    "env.framework_id": "framework_id",
    "env.framework_version": "framework_version",
    "env.editor_id": "editor_id",
    "env": "framework_id",
    "resources.flavor": "flavor",
    "resources.gpu": "count",
    "resources.cpu": "count",
    "resources": "count",
    "region": "region",
    "labels": "labels",
    "env_vars": "env_vars",
    "volumes": "volumes",
    "ssh_public_keys": "ssh_keys",
    "unsecure_http": "access",
    "idle_timeout": "idle_timeout",
    "max_runtime": "max_runtime",
}


def field_of(path: str) -> str:
    """The form field an API error path (`env_vars[1].name`, `labels.team`) belongs to."""
    if path in FIELD_OF:
        return FIELD_OF[path]
    head = path.split("[", 1)[0]
    if head in FIELD_OF:
        return FIELD_OF[head]
    top = path.split(".", 1)[0].split("[", 1)[0]
    return FIELD_OF.get(top, "form")


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _pairs(text: str, what: str, errors: dict) -> list[tuple[str, str]]:
    pairs = []
    for number, line in enumerate(_lines(text), 1):
        key, sep, value = line.partition("=")
        if not sep:
            errors.setdefault(what, []).append(f"line {number} ({line[:40]!r}) is not NAME=value")
            continue
        pairs.append((key.strip(), value.strip()))
    return pairs


def _rows(post, prefix: str, names: list[str]) -> list[dict]:
    columns = {name: post.getlist(f"{prefix}_{name}") for name in names}
    count = max((len(v) for v in columns.values()), default=0)
    rows = [
        {name: (columns[name][i] if i < len(columns[name]) else "").strip() for name in names}
        for i in range(count)
    ]
    return [row for row in rows if any(v for k, v in row.items() if k not in ("mode", "cache"))]


VOLUME_FIELDS = ["datastore", "container", "prefix", "mount", "mode", "cache"]
GIT_FIELDS = ["url", "branch", "mount", "mode"]


def spec_from_form(post) -> tuple[dict, dict]:
    """The API's request body for the form's fields, and the form's own errors."""
    errors: dict[str, list[str]] = {}
    unit = "gpu" if post.get("unit") == "gpu" else "cpu"
    resources = {unit: post.get("count", "").strip() or "1"}
    if post.get("flavor"):
        resources["flavor"] = post["flavor"]
    env = {"framework_id": post.get("framework_id", ""), "editor_id": post.get("editor_id", "")}
    if post.get("framework_version"):
        env["framework_version"] = post["framework_version"]
    volumes = []
    for row in _rows(post, "vol", VOLUME_FIELDS):
        where = f"{row['container']}@{row['datastore']}"
        if row["prefix"]:
            where += "/" + row["prefix"].strip("/")
        volumes.append(
            f"{where}:{row['mount']}:{row['mode'] or 'RO'}"
            + (":cache" if row["cache"] == "yes" else "")
        )
    for row in _rows(post, "git", GIT_FIELDS):
        url = row["url"] + (f"@{row['branch']}" if row["branch"] else "")
        volumes.append(f"{url}:{row['mount']}:{row['mode'] or 'RO'}")
    data = {
        "name": post.get("name", "").strip(),
        "env": env,
        "resources": resources,
        "region": post.get("region", ""),
        "labels": dict(_pairs(post.get("labels", ""), "labels", errors)),
        "env_vars": [
            {"name": k, "value": v} for k, v in _pairs(post.get("env_vars", ""), "env_vars", errors)
        ],
        "volumes": volumes,
        "unsecure_http": post.get("access") == "open",
        "ssh_public_keys": _lines(post.get("ssh_keys", "")),
    }
    for limit in ("idle_timeout", "max_runtime"):
        if post.get(limit, "").strip():
            data[limit] = post[limit].strip()
    return data, errors


def _form_context(project, post=None, errors=None) -> dict:
    cat = catalog()
    post = post or {}
    return {
        "catalog": cat,
        "frameworks": sorted(cat.frameworks.values(), key=lambda f: f.id),
        "flavors": sorted(cat.flavors.values(), key=lambda f: (f.type, f.id)),
        "regions": sorted(cat.regions.values(), key=lambda r: r.id),
        "default_region": cat.default_region.id if cat.default_region else "",
        "datastores": list(project.datastores.order_by("alias").values_list("alias", "type")),
        "values": post,
        "volume_rows": _rows(post, "vol", VOLUME_FIELDS) if post else [],
        "git_rows": _rows(post, "git", GIT_FIELDS) if post else [],
        "errors": errors or {},
        "price": price_context(project, post),
        "max_gpus": MAX_GPUS,
        "max_cpus": MAX_CPUS,
    }


@project_page(Ability.OPERATE)
def notebook_new(request, project, role):
    if request.method != "POST":
        return render(request, "console/notebook_new.html", _form_context(project))
    data, errors = spec_from_form(request.POST)
    body = NotebookSpecSerializer(data=data, context={"project": project})
    if body.is_valid() and not errors:
        fields = body.to_model_fields()
        try:
            fields["labels"] = access.labels_for_new_notebook(None, fields["labels"])
            notebook = services.create(project, fields, actor=actor(request), user=request.user)
        except ValidationError as exc:
            _merge(errors, _flatten(exc.detail))
        except DomainError as exc:
            target = "count" if isinstance(exc, QuotaExceeded) else "form"
            errors.setdefault(target, []).append(exc.message)
        else:
            messages.success(request, f"{notebook.name} is created and queued.")
            return redirect("console:notebook", project.name, notebook.pk)
    else:
        _merge(errors, _flatten(body.errors))
    return render(
        request,
        "console/notebook_new.html",
        _form_context(project, request.POST, errors),
        status=400,
    )


def _merge(errors: dict, flat: dict) -> None:
    for path, messages_ in flat.items():
        errors.setdefault(field_of(path), []).extend(messages_)


def price_context(project, post) -> dict:
    """The chosen resources' price per minute and per hour, their limits, and the GPUs left."""
    cat = catalog()
    unit = "gpu" if post.get("unit") == "gpu" else "cpu"
    flavor = cat.flavors.get(post.get("flavor", "")) or cat.default_flavor(unit)
    count = post.get("count", "1")
    count = int(count) if str(count).isdecimal() else 1
    per_unit, currency = price_for(flavor.id, timezone.now())
    used = (
        Notebook.objects.filter(project=project, state__in=QUOTA_STATES).aggregate(n=Sum("gpu"))[
            "n"
        ]
        or 0
    )
    return {
        "flavor": flavor,
        "count": count,
        "unit": flavor.type,
        "per_minute": per_unit * count,
        "per_hour": per_unit * count * 60,
        "currency": currency,
        "gpu_quota": project.gpu_quota,
        "gpu_left": max(project.gpu_quota - used, 0),
        "over_quota": flavor.type == "gpu" and count > project.gpu_quota - used,
        "over_flavor": count > flavor.max,
        "cpus": flavor.cpus * count,
        "memory_gib": flavor.memory_gib * count,
        "storage_gib": flavor.storage_gib * count,
    }


@require_POST
@project_page()
def notebook_price(request, project, role):
    return render(request, "console/_price.html", {"price": price_context(project, request.POST)})


@require_GET
@project_page(Ability.OPERATE)
def volume_row(request, project, role):
    kind = "git" if request.GET.get("kind") == "git" else "vol"
    return render(
        request,
        f"console/_{kind}_row.html",
        {"row": {}, "datastores": list(project.datastores.values_list("alias", "type"))},
    )
