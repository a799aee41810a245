"""Idle, runtime and budget limits: the control plane's rules that stop notebooks.

Beat sends `notebooks.check_limits` (control) every
NBCLOUD_LIMITS_CHECK_INTERVAL seconds. It enforces `max_runtime` from the
database alone (stop, or restart on the same host with the workspace in place
when `timeout_auto_restart` is set), and asks each host with notebooks that
have an idle timeout to check them (`hosts.check_idle`, `workers.idle`), since
only the host reaches its editors; the host reports what it saw to
`apply_idle_timeout`.

A notebook is busy while a kernel executes, a terminal or VS Code saw use,
its GPUs or CPUs work above NBCLOUD_IDLE_GPU_PERCENT / NBCLOUD_IDLE_CPU_CORES
(the sampler's readings), a client reached it through the gateway, or its
owner asked to keep it alive. A computation left running with the browser
closed keeps its kernel busy: it is not idle. NBCLOUD_IDLE_WARNING seconds
(at most half the timeout) before the stop, an IDLE_WARNING event says when it
will stop. Each idle warning, idle stop, budget warning and budget spent is also
a notice to the project's notice targets (`nbcloud.notices`).
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from nbcloud import dispatch
from nbcloud.billing import services as billing
from nbcloud.billing.models import Budget
from nbcloud.notebooks import services
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import InfoCode, State
from nbcloud.notices import services as notices
from nbcloud.notices.models import Kind
from nbcloud.projects.models import Project


def idle_timeout(notebook: Notebook) -> int | None:
    return notebook.idle_timeout or notebook.project.default_idle_timeout


def max_runtime(notebook: Notebook) -> int | None:
    return notebook.max_runtime or notebook.project.default_max_runtime


def duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{hours} h"] if hours else []
    if minutes:
        parts.append(f"{minutes} min")
    if seconds or not parts:
        parts.append(f"{seconds} s")
    return " ".join(parts)


def check_limits(now: datetime | None = None) -> None:
    """Enforce max_runtime and ask hosts to check idleness. Only the running notebooks
    that have such a limit (their own or their project's) are read, through indexes
    of their own: a fleet without limits costs a few index lookups, not a row per
    running notebook."""
    now = now or timezone.now()
    timed = Notebook.objects.filter(
        pk__in=_limited("max_runtime", "default_max_runtime")
    ).select_related("project", "host")
    for notebook in timed:
        limit = max_runtime(notebook)
        started = notebook.last_started_at
        if limit and started and now >= started + timedelta(seconds=limit):
            _enforce_max_runtime(notebook, limit)
    idle_hosts = (
        Notebook.objects.filter(pk__in=_limited("idle_timeout", "default_idle_timeout"))
        .order_by("host__name")
        .values_list("host__name", flat=True)
        .distinct()
    )
    dispatch.check_idle(*idle_hosts)


def _limited(field: str, project_default: str) -> set:
    """Ids of the running notebooks with `field` set, or whose project has
    `project_default` set: two lookups (a partial index of the notebooks that set
    the limit; the few projects that set a default), never a scan of all running."""
    running = Notebook.objects.filter(state=State.RUNNING, host__isnull=False)
    own = running.filter(**{f"{field}__isnull": False}).values_list("pk", flat=True)
    defaults = list(
        Project.objects.filter(**{f"{project_default}__isnull": False}).values_list("pk", flat=True)
    )
    if not defaults:
        return set(own)
    # By the project's own index (project, state), project by project.
    return {*own, *running.filter(project_id__in=defaults).values_list("pk", flat=True)}


def _enforce_max_runtime(notebook: Notebook, limit: int) -> None:
    try:
        if notebook.timeout_auto_restart:
            with transaction.atomic():
                services.transition(
                    notebook,
                    State.RESTARTING,
                    actor=services.SYSTEM,
                    code=InfoCode.TIMEOUT_RESTART,
                    message=f"Reached its max_runtime ({duration(limit)}); restarting with "
                    "its workspace (timeout_auto_restart).",
                )
                dispatch.restart(str(notebook.pk), notebook.host.name)
        else:
            services.stop(
                notebook,
                actor=services.SYSTEM,
                code=InfoCode.MAX_RUNTIME,
                message=f"Reached its max_runtime ({duration(limit)}); stopped, the workspace "
                "is saved.",
            )
    except services.InvalidState:
        pass  # a user action got there first


def resource_activity(notebook: Notebook, now: datetime) -> datetime | None:
    """The latest sample that shows the GPUs or CPUs at work, since the last check."""
    window = now - timedelta(
        seconds=settings.NBCLOUD_LIMITS_CHECK_INTERVAL + 2 * settings.NBCLOUD_SAMPLE_INTERVAL
    )
    for sample in notebook.samples.filter(at__gte=window).order_by("-at"):
        gpu_busy = any(
            gpu["utilization_percent"] > settings.NBCLOUD_IDLE_GPU_PERCENT for gpu in sample.gpus
        )
        cpu_busy = (sample.cpu_cores or 0) > settings.NBCLOUD_IDLE_CPU_CORES
        if gpu_busy or cpu_busy:
            return sample.at
    return None


def apply_idle_timeout(
    notebook: Notebook, seen: datetime | None, timeout: int, now: datetime
) -> None:
    """Given the latest sign of use a host saw (`seen`), warn or stop an idle notebook."""
    if seen is not None:
        record_activity(notebook, seen)
    since = max(t for t in (notebook.last_activity_at, notebook.last_started_at) if t)
    idle_for = (now - since).total_seconds()
    stop_at = since + timedelta(seconds=timeout)
    lead = min(settings.NBCLOUD_IDLE_WARNING, timeout / 2)
    try:
        if idle_for >= timeout:
            message = (
                f"Idle for {duration(idle_for)} (idle_timeout {duration(timeout)}); "
                "stopped, the workspace is saved."
            )
            with transaction.atomic():
                stopping = services.stop(
                    notebook, actor=services.SYSTEM, code=InfoCode.IDLE_TIMEOUT, message=message
                )
                notices.notify(
                    notebook.project,
                    Kind.IDLE_STOPPED,
                    f"Notebook {notebook.name} stopped: idle for {duration(idle_for)}",
                    message,
                    {**notices.notebook_data(stopping), "idle_since": since.isoformat()},
                )
        elif idle_for >= timeout - lead:
            _warn(notebook, since, stop_at)
    except services.InvalidState:
        pass  # a user action got there first


def record_activity(notebook: Notebook, at: datetime) -> None:
    """Move last_activity_at forward (never back); clear a pending idle warning."""
    if notebook.last_activity_at and notebook.last_activity_at >= at:
        return
    Notebook.objects.filter(pk=notebook.pk).update(last_activity_at=at)
    notebook.last_activity_at = at
    if notebook.info_code == InfoCode.IDLE_WARNING:
        services.set_info(notebook, InfoCode.RUNNING, "The editor is up.")


def _warn(notebook: Notebook, since: datetime, stop_at: datetime) -> None:
    if notebook.events.filter(code=InfoCode.IDLE_WARNING, at__gte=since).exists():
        return
    message = (
        f"Idle since {since:%Y-%m-%d %H:%M:%S} UTC: it stops at {stop_at:%H:%M:%S} UTC "
        "unless it is used or kept alive (POST .../keepalive/)."
    )
    with transaction.atomic():
        services.record_event(notebook, InfoCode.IDLE_WARNING, message)
        services.set_info(notebook, InfoCode.IDLE_WARNING, message)
        notices.notify(
            notebook.project,
            Kind.IDLE_WARNING,
            f"Notebook {notebook.name} is idle: it stops at {stop_at:%H:%M} UTC",
            message,
            {
                **notices.notebook_data(notebook),
                "idle_since": since.isoformat(),
                "stops_at": stop_at.isoformat(),
            },
        )


def keepalive(notebook: Notebook, now: datetime | None = None) -> Notebook:
    """Postpone the idle stop: the notebook counts as used now."""
    if notebook.state != State.RUNNING:
        raise services.InvalidState(
            f"Notebook {notebook.name!r} is {notebook.state}: only a RUNNING notebook can be "
            "kept alive."
        )
    record_activity(notebook, now or timezone.now())
    return notebook


def enforce_budgets(now: datetime) -> None:
    """Tell each project whose spending this month reached its budget's warning level or
    the budget itself (once a month and amount each), and stop running notebooks of
    those whose budget is spent where the budget asks to."""
    for budget in Budget.objects.select_related("project"):
        spent = billing.spent_this_month(budget, now)
        if spent >= budget.monthly_amount:
            _budget_notice(budget, spent, now, Kind.BUDGET_EXCEEDED)
            if budget.stop_running:
                _stop_over_budget(budget, spent)
        elif spent * 100 >= budget.monthly_amount * budget.warning_percent:
            _budget_notice(budget, spent, now, Kind.BUDGET_WARNING)


def _budget_notice(budget: Budget, spent, now: datetime, kind: Kind) -> None:
    amount = f"{budget.monthly_amount:.2f} {budget.currency}"
    if kind == Kind.BUDGET_EXCEEDED:
        subject = f"Monthly budget of {amount} reached"
        then = (
            "running notebooks are being stopped (their workspaces are saved) and new starts "
            "are refused"
            if budget.stop_running
            else "new starts are refused; running notebooks go on"
        )
    else:
        subject = f"{budget.warning_percent}% of the monthly budget of {amount} spent"
        then = "at 100%, new starts are refused"
        if budget.stop_running:
            then += " and running notebooks are stopped"
    notices.notify(
        budget.project,
        kind,
        subject,
        f"Project {budget.project.name} has spent {spent:.2f} {budget.currency} this month "
        f"({now:%B %Y}) of its budget of {amount}: {then}.",
        {
            "budget": {
                "monthly_amount": str(budget.monthly_amount),
                "currency": budget.currency,
                "spent": str(spent),
                "warning_percent": budget.warning_percent,
                "stop_running": budget.stop_running,
                "month": f"{now:%Y-%m}",
            },
            "url": notices.console_url(budget.project, "usage/"),
        },
        key=f"{now:%Y-%m}:{budget.monthly_amount.normalize()}{budget.currency}",
    )


def _stop_over_budget(budget: Budget, spent) -> None:
    running = Notebook.objects.filter(project=budget.project, state=State.RUNNING)
    for notebook in running.select_related("host"):
        try:
            services.stop(
                notebook,
                actor=services.SYSTEM,
                code=InfoCode.BUDGET_EXCEEDED,
                message=f"Monthly budget of {budget.monthly_amount} {budget.currency} reached "
                f"({spent} {budget.currency} spent); stopping, the workspace is saved.",
            )
        except services.InvalidState:
            continue
