"""The notebook lifecycle: creation, user actions and every state change.

Every change of state goes through `transition`, which checks the table in
`states`, applies a conditional UPDATE (so two racing changes cannot both win)
and writes the event, in one transaction. Work that must happen after the
change (a task) is sent on commit.
"""

import logging
import secrets
from dataclasses import dataclass

from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from nbcloud import bulk, dispatch
from nbcloud.billing import services as billing
from nbcloud.errors import InvalidState, QuotaExceeded
from nbcloud.notices import services as notices
from nbcloud.notices.models import Kind
from nbcloud.projects.models import Project

from .models import Backup, EditorLog, Notebook, NotebookEvent
from .states import ACTIONS, FAILURE_CODES, QUOTA_STATES, InfoCode, State, is_legal
from .volumes import ObjectVolume

log = logging.getLogger(__name__)
SYSTEM = "system"


def transition(
    notebook: Notebook, to: State, *, actor: str, code: InfoCode, message: str = "", **fields
) -> Notebook:
    """Move `notebook` to `to`, or raise InvalidState if another change won. A notebook
    that becomes FAILED tells the project's notice targets, in the same transaction."""
    from_state = notebook.state
    if not is_legal(from_state, to):
        raise InvalidState(f"Notebook {notebook.name!r} is {from_state}; it cannot become {to}.")
    now = timezone.now()
    updates = {
        "state": to,
        "info_code": code,
        "info_message": message,
        "state_changed_at": now,
        "updated_at": now,
        **fields,
    }
    with transaction.atomic():
        changed = Notebook.objects.filter(pk=notebook.pk, state=from_state).update(**updates)
        if changed and "host" in fields:
            _bill_capacity_change(notebook, reserved=fields["host"] is not None, at=now)
        if not changed:
            current = (
                Notebook.objects.filter(pk=notebook.pk).values_list("state", flat=True).first()
            )
            raise InvalidState(
                f"Notebook {notebook.name!r} changed meanwhile: it is now {current}, not {from_state}."
            )
        NotebookEvent.objects.create(
            notebook=notebook,
            at=now,
            actor=actor,
            from_state=from_state,
            to_state=to,
            code=code,
            message=message,
        )
        if to == State.FAILED:
            notices.notify(
                notebook.project,
                Kind.NOTEBOOK_FAILED,
                f"Notebook {notebook.name} FAILED",
                message,
                {
                    **notices.notebook_data(notebook, state=to, code=code, message=message),
                    "from_state": str(from_state),
                },
            )
    for name, value in updates.items():
        setattr(notebook, name, value)
    log.info("notebook %s: %s -> %s (%s) %s", notebook.pk, from_state, to, code, message)
    return notebook


@dataclass(frozen=True)
class Change:
    """One notebook's part in `transition_all`: to `to` (or, to its own state, only a new
    `info`), and, when `placement` is given, the capacity it reserves there."""

    notebook: Notebook
    to: State
    code: InfoCode
    message: str
    placement: "Reservation | None" = None


@dataclass(frozen=True)
class Reservation:
    """Capacity a notebook takes on a host, with a new editor secret for the run."""

    host_id: int
    gpu_uuids: tuple[str, ...]
    editor_secret: str


_CHANGE_COLUMNS = {
    "notebook": "uuid",
    "from_state": "text",
    "to_state": "text",
    "code": "text",
    "message": "text",
    "place": "boolean",
    "to_host": "integer",
    "to_gpus": "jsonb",
    "to_secret": "text",
}
_UPDATE_CHANGES = """
UPDATE notebooks_notebook SET
    state = v.to_state,
    info_code = v.code,
    info_message = v.message,
    state_changed_at = CASE WHEN v.to_state <> v.from_state THEN %s ELSE state_changed_at END,
    updated_at = CASE WHEN v.to_state <> v.from_state THEN %s ELSE updated_at END,
    host_id = CASE WHEN v.place THEN v.to_host ELSE host_id END,
    gpu_uuids = CASE WHEN v.place THEN v.to_gpus ELSE gpu_uuids END,
    editor_secret = CASE WHEN v.place THEN v.to_secret ELSE editor_secret END
FROM {rows}
WHERE id = v.notebook AND state = v.from_state
RETURNING id
"""
_INSERT_EVENTS = """
INSERT INTO notebooks_notebookevent (notebook_id, at, actor, from_state, to_state, code, message)
SELECT v.notebook, %s, %s, v.from_state, v.to_state, v.code, v.message FROM {rows}
"""


def transition_all(changes: list[Change], *, actor: str) -> list[Change]:
    """`transition` for many notebooks in one go: one UPDATE of the notebooks, one
    INSERT of their events, one of the intervals opened by the capacity reserved.

    Each row changes only if it is still in the state its notebook was read in;
    returns the changes that were applied (the others lost to another change).
    """
    if not changes:
        return []
    for change in changes:
        if change.to != change.notebook.state and not is_legal(change.notebook.state, change.to):
            raise InvalidState(
                f"Notebook {change.notebook.name!r} is {change.notebook.state}; it cannot become "
                f"{change.to}."
            )
    key = {change.notebook.pk: bulk.key(Notebook, change.notebook.pk) for change in changes}
    rows = [
        {
            "notebook": key[change.notebook.pk],
            "from_state": change.notebook.state,
            "to_state": change.to,
            "code": change.code,
            "message": change.message,
            "place": change.placement is not None,
            "to_host": change.placement and change.placement.host_id,
            "to_gpus": list(change.placement.gpu_uuids) if change.placement else [],
            "to_secret": change.placement and change.placement.editor_secret,
        }
        for change in changes
    ]
    now = timezone.now()
    at = bulk.stamp(now)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            _UPDATE_CHANGES.format(rows=bulk.table(_CHANGE_COLUMNS)), [at, at, bulk.rows(rows)]
        )
        changed = {bulk.key(Notebook, row[0]) for row in cursor}
        events = [r for r in rows if r["notebook"] in changed and r["to_state"] != r["from_state"]]
        if events:
            cursor.execute(
                _INSERT_EVENTS.format(rows=bulk.table(_CHANGE_COLUMNS)),
                [at, actor, bulk.rows(events)],
            )
        applied = [change for change in changes if key[change.notebook.pk] in changed]
        reserving = [change.notebook for change in applied if change.placement is not None]
        billing.open_intervals(reserving, now)
    moved = [change for change in applied if change.to != change.notebook.state]
    for change in applied:
        notebook = change.notebook
        if change.to != notebook.state:
            notebook.state, notebook.state_changed_at, notebook.updated_at = change.to, now, now
        notebook.info_code, notebook.info_message = change.code, change.message
        if change.placement is not None:
            notebook.host_id = change.placement.host_id
            notebook.gpu_uuids = list(change.placement.gpu_uuids)
            notebook.editor_secret = change.placement.editor_secret
    log.info(
        "%d notebook(s) changed in one go (%d state changes, %d reserving capacity)",
        len(applied),
        len(moved),
        len(reserving),
    )
    return applied


def _bill_capacity_change(notebook: Notebook, *, reserved: bool, at) -> None:
    """Capacity reserved opens a billable interval; capacity released closes it.

    Decided from the database, not from the caller's copy of the notebook:
    one open interval per notebook at most, and a release always closes it.
    """
    if not reserved:
        billing.close_interval(notebook)
    elif not notebook.intervals.filter(ended_at__isnull=True).exists():
        billing.open_interval(notebook, at)


def set_info(notebook: Notebook, code: InfoCode, message: str) -> None:
    """Progress within a state (e.g. 'restoring workspace'), without an event."""
    Notebook.objects.filter(pk=notebook.pk).update(info_code=code, info_message=message)
    notebook.info_code, notebook.info_message = code, message


def record_event(notebook: Notebook, code: InfoCode, message: str, *, actor: str = SYSTEM) -> None:
    """Something worth telling that changes no state (a data sync, a warning)."""
    NotebookEvent.objects.create(
        notebook=notebook,
        actor=actor,
        from_state=notebook.state,
        to_state=notebook.state,
        code=code,
        message=message,
    )


def _action_target(notebook: Notebook, action: str) -> State:
    allowed = ACTIONS[action]
    target = allowed.get(State(notebook.state))
    if target is None:
        raise InvalidState(
            f"Notebook {notebook.name!r} is {notebook.state}: {action} is allowed only when it is "
            f"{', '.join(sorted(allowed))}."
        )
    return target


def _check_gpu_quota(project: Project, extra_gpus: int, exclude: Notebook | None = None) -> None:
    """Call inside a transaction that holds the project row lock."""
    if not extra_gpus:
        return
    active = Notebook.objects.filter(project=project, state__in=QUOTA_STATES)
    if exclude is not None:
        active = active.exclude(pk=exclude.pk)
    used = active.aggregate(total=Sum("gpu"))["total"] or 0
    if used + extra_gpus > project.gpu_quota:
        raise QuotaExceeded(
            f"Project {project.name!r} may use {project.gpu_quota} GPUs at once; {used} are in use "
            f"or queued, so {extra_gpus} more would exceed it. Stop a notebook or ask an "
            "administrator to raise the quota."
        )


def _locked_project(project: Project) -> Project:
    # Serialises quota checks of one project: with PostgreSQL a row lock, with
    # SQLite the database lock taken at BEGIN IMMEDIATE.
    return Project.objects.select_for_update().get(pk=project.pk)


def create(project: Project, spec: dict, *, actor: str, user=None) -> Notebook:
    """Create a notebook from a validated spec and queue it for a host."""
    with transaction.atomic():
        project = _locked_project(project)
        _check_gpu_quota(project, spec.get("gpu", 0))
        billing.check_budget(project)
        now = timezone.now()
        notebook = Notebook.objects.create(
            project=project,
            created_by=user,
            state=State.QUEUED,
            info_code=InfoCode.WAITING_FOR_CAPACITY,
            info_message="Waiting for a host.",
            queued_at=now,
            state_changed_at=now,
            editor_secret=secrets.token_hex(24),
            **spec,
        )
        NotebookEvent.objects.create(
            notebook=notebook,
            at=now,
            actor=actor,
            to_state=State.QUEUED,
            code=InfoCode.WAITING_FOR_CAPACITY,
            message="Created.",
        )
        dispatch.schedule()
    return notebook


def start(notebook: Notebook, *, actor: str) -> Notebook:
    with transaction.atomic():
        project = _locked_project(notebook.project)
        notebook.refresh_from_db()
        target = _action_target(notebook, "start")
        _check_gpu_quota(project, notebook.gpu, exclude=notebook)
        billing.check_budget(project)
        transition(
            notebook,
            target,
            actor=actor,
            code=InfoCode.USER_START,
            message="Start requested; waiting for a host.",
            queued_at=timezone.now(),
        )
        dispatch.schedule()
    return notebook


def stop(
    notebook: Notebook,
    *,
    actor: str,
    code: InfoCode = InfoCode.USER_STOP,
    message: str = "Stop requested; saving the workspace.",
) -> Notebook:
    with transaction.atomic():
        notebook = Notebook.objects.select_for_update().get(pk=notebook.pk)
        target = _action_target(notebook, "stop")
        if target == State.STOPPED:  # still queued: nothing runs
            # Queued on a host's scheduler, it gives that host back; the host's
            # sweep cancels the waiting job (a run it no longer holds).
            released = release_fields() if notebook.host_id else {}
            transition(
                notebook,
                target,
                actor=actor,
                code=code,
                message="Stopped before it started.",
                **released,
            )
            dispatch.schedule()
        else:
            transition(notebook, target, actor=actor, code=code, message=message)
            dispatch.stop(str(notebook.pk), notebook.host.name)
    return notebook


def delete(notebook: Notebook, *, actor: str) -> Notebook:
    with transaction.atomic():
        notebook = Notebook.objects.select_for_update().get(pk=notebook.pk)
        target = _action_target(notebook, "delete")
        transition(
            notebook, target, actor=actor, code=InfoCode.USER_DELETE, message="Delete requested."
        )
        if notebook.host_id is None:
            # Nothing runs and nothing is kept on a host: done here.
            transition(
                notebook, State.DELETED, actor=SYSTEM, code=InfoCode.DELETED, message="Deleted."
            )
            dispatch.schedule()
        else:
            dispatch.delete(str(notebook.pk), notebook.host.name)
    return notebook


def update(notebook: Notebook, changes: dict, *, actor: str) -> Notebook:
    """Change what may change on a live notebook: labels, and the rest only when stopped."""
    with transaction.atomic():
        notebook = Notebook.objects.select_for_update().get(pk=notebook.pk)
        # Limits may change while it runs: a user extends a timeout without a restart;
        # SSH keys too: the gateway reads them at each login.
        live = {"labels", "timeout_auto_restart", "idle_timeout", "max_runtime", "ssh_public_keys"}
        restricted = set(changes) - live
        if restricted and notebook.state not in (State.STOPPED, State.FAILED):
            raise InvalidState(
                f"Notebook {notebook.name!r} is {notebook.state}: {', '.join(sorted(restricted))} "
                "can be changed only when it is STOPPED or FAILED; labels can change any time."
            )
        for name, value in changes.items():
            setattr(notebook, name, value)
        notebook.save()
    return notebook


# What a fork copies from its source: the spec, not the status.
SPEC_FIELDS = (
    "labels",
    "framework_id",
    "framework_version",
    "editor_id",
    "env_vars",
    "flavor",
    "gpu",
    "cpu",
    "region",
    "volumes",
    "unsecure_http",
    "ssh_public_keys",
    "timeout_auto_restart",
    "idle_timeout",
    "max_runtime",
)


def fork(backup: Backup, *, actor: str, user=None, name: str = "") -> Notebook:
    """A new notebook with the spec of the backup's notebook, starting from that backup.

    The fork shares the backup's archive (no copy): its first start restores
    it like any latest backup, and retention never deletes an archive a row
    still names.
    """
    source = backup.notebook
    fields = {f: getattr(source, f) for f in SPEC_FIELDS}
    fields["name"] = name or f"{source.name}-fork"[:100]
    with transaction.atomic():
        notebook = create(source.project, {**fields, "forked_from": backup}, actor=actor, user=user)
        Backup.objects.create(
            notebook=notebook,
            created_at=backup.created_at,
            storage_name=backup.storage_name,
            size=backup.size,
            sha256=backup.sha256,
            workspace_size=backup.workspace_size,
        )
        record_event(
            notebook,
            InfoCode.FORKED,
            f"Forked from backup {backup.pk} of notebook {source.name!r} ({source.pk}).",
            actor=actor,
        )
    return notebook


def request_datasync(notebook: Notebook, *, actor: str) -> Notebook:
    """Push the RW volumes of a running notebook now (OVH's datasync)."""
    with transaction.atomic():
        notebook = Notebook.objects.select_for_update().get(pk=notebook.pk)
        if notebook.state != State.RUNNING:
            raise InvalidState(
                f"Notebook {notebook.name!r} is {notebook.state}: data can be synced only while "
                "it is RUNNING (a stop pushes its volumes anyway)."
            )
        writable = [v for v in notebook.volume_values if isinstance(v, ObjectVolume) and v.writable]
        if not writable:
            raise InvalidState(
                f"Notebook {notebook.name!r} has no RW or RWD object-storage volume: there is "
                "nothing to push (git volumes are pushed with git from the notebook)."
            )
        record_event(
            notebook,
            InfoCode.PUSHING_DATA,
            f"Data sync requested for {len(writable)} volume(s).",
            actor=actor,
        )
        dispatch.push_volumes(str(notebook.pk), notebook.host.name)
    return notebook


# Host-side outcomes, called by the workers.


def save_editor_log(notebook: Notebook, text: str) -> None:
    """Keep the last EditorLog.KEEP_LINES lines of the editor's log (written by its host)."""
    lines = text.splitlines()[-EditorLog.KEEP_LINES :]
    EditorLog.objects.update_or_create(
        notebook_id=notebook.pk,
        defaults={"text": "\n".join(lines), "updated_at": timezone.now()},
    )


def editor_log(notebook: Notebook, tail: int) -> dict:
    """The last `tail` lines of the editor's log its host shipped, and when."""
    shipped = EditorLog.objects.filter(notebook_id=notebook.pk).first()
    if shipped is None:
        return {"logs": "", "updated_at": None}
    lines = shipped.text.splitlines()[-tail:] if tail else []
    return {"logs": "\n".join(lines), "updated_at": shipped.updated_at}


def save_runtime_state(notebook: Notebook, state: dict) -> None:
    Notebook.objects.filter(pk=notebook.pk).update(runtime_state=state)
    notebook.runtime_state = state


def mark_running(notebook: Notebook, *, editor_url: str, runtime_state: dict) -> None:
    from nbcloud.gateway.routing import public_url

    transition(
        notebook,
        State.RUNNING,
        actor=SYSTEM,
        code=InfoCode.RUNNING,
        message="The editor is up.",
        url=public_url(notebook.pk),
        editor_url=editor_url,
        runtime_state=runtime_state,
        last_started_at=timezone.now(),
    )


def wait_on_scheduler(notebook: Notebook, reason: str) -> None:
    """The host's scheduler (Slurm) holds the editor in its queue: QUEUED with its
    reason, still on that host (the placer leaves it alone)."""
    transition(
        notebook, State.QUEUED, actor=SYSTEM, code=InfoCode.WAITING_FOR_CAPACITY, message=reason
    )


def scheduler_started(notebook: Notebook) -> None:
    """The host's scheduler started the editor it kept waiting: its start goes on."""
    transition(
        notebook,
        State.STARTING,
        actor=SYSTEM,
        code=InfoCode.PLACED,
        message=f"The scheduler of host {notebook.host.name} started it.",
    )
    dispatch.start(str(notebook.pk), notebook.host.name)


def release_fields() -> dict:
    """What a notebook's row loses when it gives its host's capacity back."""
    return {
        "host": None,
        "gpu_uuids": [],
        "url": "",
        "editor_url": "",
        "runtime_state": {},
        "last_stopped_at": timezone.now(),
    }


def fail_start(notebook: Notebook, message: str, code: InfoCode = InfoCode.START_FAILED) -> None:
    transition(
        notebook,
        State.FAILED,
        actor=SYSTEM,
        code=code,
        message=message,
        **release_fields(),
    )
    dispatch.schedule()  # freed capacity may start a queued one


def editor_died(notebook: Notebook, message: str) -> None:
    """A running editor is gone: save the workspace, then end FAILED with the reason."""
    transition(notebook, State.STOPPING, actor=SYSTEM, code=InfoCode.EDITOR_DIED, message=message)


# Stops for these reasons end STOPPED with the reason as the status' info.
LIMIT_CODES = frozenset({InfoCode.IDLE_TIMEOUT, InfoCode.MAX_RUNTIME})


def finish_stop(
    notebook: Notebook,
    *,
    workspace_size: int | None,
    failure: str = "",
    failure_code: InfoCode = InfoCode.BACKUP_FAILED,
) -> None:
    # Why the notebook entered STOPPING decides how it ends: a failure (a dead
    # editor) ends FAILED with that reason even though the workspace is saved.
    entered = notebook.events.filter(to_state=State.STOPPING).order_by("-at", "-id").first()
    if failure:
        target, code, message = State.FAILED, failure_code, failure
    elif entered is not None and entered.code in FAILURE_CODES:
        target, code, message = State.FAILED, entered.code, entered.message
    elif entered is not None and entered.code in LIMIT_CODES:
        # Stopped by a limit: the status keeps saying which.
        target, code, message = State.STOPPED, entered.code, entered.message
    else:
        target, code, message = State.STOPPED, InfoCode.STOPPED, "Stopped; the workspace is saved."
    fields = release_fields()
    if workspace_size is not None:
        fields["workspace_size"] = workspace_size
    transition(notebook, target, actor=SYSTEM, code=code, message=message, **fields)
    dispatch.schedule()  # freed capacity may start a queued one


def finish_delete(notebook: Notebook) -> None:
    transition(
        notebook,
        State.DELETED,
        actor=SYSTEM,
        code=InfoCode.DELETED,
        message="Deleted.",
        **release_fields(),
    )
    dispatch.schedule()  # freed capacity may start a queued one
