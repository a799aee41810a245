"""Host-side lifecycle: what a host's worker does to start, stop and delete.

Each function takes a notebook id and this host's name, reloads the row and
returns at once when the work is already done or not this host's (a
redelivered task changes nothing).
"""

import contextlib
import dataclasses
import fcntl
import functools
import logging
import threading
import time

import requests
from django.conf import settings

from nbcloud import dispatch
from nbcloud.billing import services as billing
from nbcloud.gateway import routing
from nbcloud.hosts import services as host_services
from nbcloud.hosts.inventory import read_inventory
from nbcloud.monitoring.limits import max_runtime
from nbcloud.notebooks import services
from nbcloud.notebooks.models import EditorLog, Notebook
from nbcloud.notebooks.states import InfoCode, State

from . import environments, ledger, volumes, workspace
from .runtimes import LaunchSpec, Runtime, StartError, get_runtime, slurm
from .runtimes.editors import readiness_headers, readiness_path

log = logging.getLogger(__name__)


def register_host(
    name: str | None = None, region: str | None = None, labels: dict[str, str] | None = None
) -> None:
    """Register this machine as host `name` (default: the settings) with its inventory."""
    inventory = read_inventory(settings.NBCLOUD_WORKSPACES_DIR, labels)
    if settings.NBCLOUD_RUNTIME == "slurm":  # the cluster's, not the submit node's
        inventory.update(slurm.cluster_inventory(settings.NBCLOUD_SLURM_PARTITION))
    host_services.register(
        name or settings.NBCLOUD_HOST_NAME,
        region or settings.NBCLOUD_HOST_REGION,
        inventory,
        settings.NBCLOUD_RUNTIME,
    )


_held = threading.local()


def serialised(task):
    """One lifecycle step at a time per notebook on this host (start, stop, restart,
    delete): the same task sent twice (a resume, a reconcile resend, two workers on
    one host's queue) waits for the first, then finds its work done. An flock on a
    file of the host's data directory, released by the kernel if the worker dies;
    re-entrant within a thread (a failed restart stops)."""

    @functools.wraps(task)
    def run(notebook_id: str, *args, **kwargs):
        held = _held.__dict__.setdefault("ids", set())
        if notebook_id in held:
            return task(notebook_id, *args, **kwargs)
        folder = settings.DATA_DIR / "locks"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(folder / f"{notebook_id}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            held.add(notebook_id)
            try:
                return task(notebook_id, *args, **kwargs)
            finally:
                held.discard(notebook_id)
                fcntl.flock(handle, fcntl.LOCK_UN)

    return run


def _load(notebook_id: str, host: str, state: State) -> Notebook | None:
    notebook = Notebook.objects.select_related("project", "host").filter(pk=notebook_id).first()
    if notebook is None or notebook.state != state or notebook.host is None:
        return None
    if notebook.host.name != host:
        return None
    return notebook


def gpu_devices(notebook: Notebook) -> tuple[str, ...]:
    """The device nodes of the notebook's GPUs, from its host's inventory (NVML's
    minor number, which names /dev/nvidia<minor>)."""
    if not notebook.gpu_uuids or notebook.host is None:
        return ()
    by_uuid = {gpu["uuid"]: gpu for gpu in notebook.host.gpus}
    return tuple(
        f"nvidia{by_uuid[uuid].get('minor', by_uuid[uuid].get('index'))}"
        for uuid in notebook.gpu_uuids
        if uuid in by_uuid
    )


def launch_spec(notebook: Notebook) -> LaunchSpec:
    from nbcloud.catalog.services import catalog

    flavor = catalog().flavors[notebook.flavor]
    # Tolerant: a notebook whose environment left the catalogue can still be stopped.
    framework = catalog().frameworks.get(notebook.framework_id)
    version = framework.get_version(notebook.framework_version) if framework else None
    limit = max_runtime(notebook)
    return LaunchSpec(
        notebook_id=str(notebook.pk),
        editor_id=notebook.editor_id,
        env_dir=environments.env_dir(notebook.framework_id, notebook.framework_version),
        workspace=workspace.local_path(notebook),
        uid=notebook.ensure_sandbox_uid(),
        secret=notebook.editor_secret,
        base_url=routing.base_path(notebook.pk),
        env_vars={e["name"]: e["value"] for e in notebook.env_vars},
        cpus=flavor.resources(notebook.units).cpus,
        memory_bytes=flavor.resources(notebook.units).memory_bytes,
        gpu_uuids=tuple(notebook.gpu_uuids),
        gpu_devices=gpu_devices(notebook),
        image=version.image if version else "",
        project=notebook.project.name,
        # A scheduler's own limit, a few minutes past the platform's, which stops
        # the notebook first and saves its workspace.
        time_limit_minutes=-(-limit // 60) + 5 if limit else 0,
    )


def runtime_for(
    notebook: Notebook, mounts: list | tuple = (), restore: dict[str, str] | None = None
) -> Runtime:
    """The runtime of the notebook's host (the one that started its editor)."""
    name = notebook.host.runtime if notebook.host else None
    spec = launch_spec(notebook)
    if mounts or restore:
        spec = dataclasses.replace(spec, mounts=tuple(mounts), restore=restore or {})
    return get_runtime(spec, notebook.runtime_state, name)


def stop_editor(notebook: Notebook, runtime: Runtime):
    """Stop the editor; the backup its job saved on its node as it ended, recorded (a
    runtime that `restores_workspace`), else None."""
    runtime.stop(settings.NBCLOUD_EDITOR_STOP_TIMEOUT)
    saved = runtime.workspace_result().get("saved")
    record = workspace.record_backup(notebook, saved) if saved else None
    runtime.forget_workspace_result()  # once recorded, and a failed restore's once read
    if record is not None:
        log.info("notebook %s: backup %s saved by its %s job", notebook.pk, record.pk, runtime.name)
    return record


def stop_discarding(runtime: Runtime) -> None:
    """Stop the editor, its job told not to save the workspace (a delete, the sweep of
    a run this host no longer holds)."""
    runtime.discard_workspace()
    runtime.stop(settings.NBCLOUD_EDITOR_STOP_TIMEOUT)
    runtime.forget_workspace_result()


def _prepare_workspace(notebook: Notebook, runtime: Runtime):
    """The workspace's path, and what the runtime's job restores on its node: the
    latest backup, unless this host restored it itself (other runtimes, and volumes,
    which are pulled into the workspace here)."""
    if runtime.restores_workspace and not notebook.volumes:
        return workspace.local_path(notebook), workspace.restore_values(notebook)
    return workspace.prepare(notebook), {}


def _restore_failure(notebook: Notebook, runtime: Runtime) -> StartError | None:
    """Why the runtime's job could not restore the workspace, as its owner reads it."""
    failed = runtime.workspace_result().get("restore_failed")
    if not failed:
        return None
    backup = notebook.backups.filter(pk=runtime.spec.restore.get("pk")).first()
    if backup is None:
        return StartError(f"The workspace could not be restored ({failed['kind']}).")
    return workspace.restore_failure(notebook, backup, failed["kind"], failed["detail"])


def wait_ready(runtime: Runtime, timeout: float) -> None:
    headers = readiness_headers(runtime.spec)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = runtime.poll()
        if status is not None:
            raise StartError(
                f"The editor exited during start-up (status {status}).",
                f"last log lines:\n{runtime.logs(20)}",
            )
        # Known at once, except on a scheduler's node once the job publishes it.
        endpoint = runtime.endpoint
        try:
            url = endpoint.url + readiness_path(runtime.spec.editor_id) if endpoint else ""
            if url and requests.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        # Often: each wait here is the user's, and a check costs a loopback request.
        time.sleep(0.1)
    raise StartError(f"The editor did not answer within {timeout:.0f} s.", runtime.logs(20))


def launch(notebook: Notebook, runtime: Runtime, host: str) -> str | None:
    """Start the editor and wait until it answers (StartError when it does not);
    returns the scheduler's reason instead when it keeps the editor waiting."""
    runtime.start()
    # Recorded before waiting: a worker killed now leaves a successor the
    # editor to adopt, not an orphan to duplicate.
    services.save_runtime_state(notebook, runtime.get_state())
    ledger.record(host, notebook, runtime.get_state())
    waiting = runtime.pending()
    if waiting:
        return waiting
    try:
        wait_ready(runtime, settings.NBCLOUD_EDITOR_READY_TIMEOUT)
    finally:
        ship_logs(notebook, runtime)
    services.save_runtime_state(notebook, runtime.get_state())
    return None


def bill_as_ran(notebook: Notebook, runtime: Runtime) -> None:
    """Where a scheduler says when the editor started, bill from then."""
    started, _ = runtime.ran()
    if started is not None:
        billing.restart_interval(notebook, started)


def ship_logs(notebook: Notebook, runtime: Runtime) -> None:
    """Copy the editor's log to the control plane, where the API reads it."""
    try:
        services.save_editor_log(notebook, runtime.logs(EditorLog.KEEP_LINES))
    except Exception:
        log.exception("notebook %s: shipping the editor's log failed", notebook.pk)


@serialised
def start(notebook_id: str, host: str) -> None:
    notebook = _load(notebook_id, host, State.STARTING)
    if notebook is None:
        return
    runtime = runtime_for(notebook)
    try:
        runtime.check_environment(notebook.framework_id, notebook.framework_version)
        services.set_info(notebook, InfoCode.RESTORING_WORKSPACE, "Restoring the workspace.")
        path, restore = _prepare_workspace(notebook, runtime)
        mounts = []
        if notebook.volumes:
            services.set_info(notebook, InfoCode.PULLING_DATA, "Pulling the volumes' data.")
            mounts = volumes.prepare(notebook, path)
        if mounts or restore:
            runtime = runtime_for(notebook, mounts, restore)
        services.set_info(notebook, InfoCode.STARTING_EDITOR, "Starting the editor.")
        waiting = launch(notebook, runtime, host)
    except Exception as exc:
        log.exception("notebook %s failed to start on %s", notebook_id, host)
        exc = _restore_failure(notebook, runtime) or exc
        try:
            stop_editor(notebook, runtime)
        except Exception:
            log.exception("notebook %s: stop after a failed start failed too", notebook_id)
        if isinstance(exc, volumes.VolumeError):
            services.fail_start(notebook, str(exc), InfoCode.DATA_SYNC_FAILED)
            return
        message = (
            exc.user_message if isinstance(exc, StartError) else "Internal error while starting."
        )
        services.fail_start(notebook, message)
        return
    if waiting:
        # The scheduler placed nothing yet: QUEUED with its reason, nothing billed;
        # check_host starts it again when the scheduler runs it.
        services.wait_on_scheduler(notebook, waiting)
        billing.restart_interval(notebook, None)
        return
    services.mark_running(
        notebook, editor_url=runtime.endpoint.origin, runtime_state=runtime.get_state()
    )
    bill_as_ran(notebook, runtime)


@serialised
def restart(notebook_id: str, host: str) -> None:
    """Restart the editor in place: same host, same workspace, capacity kept."""
    notebook = _load(notebook_id, host, State.RESTARTING)
    if notebook is None:
        return
    runtime = runtime_for(notebook)
    try:
        stop_editor(notebook, runtime)
        if notebook.volumes:  # written data goes out, and the mounts come back
            volumes.push(notebook)
            mounts = volumes.prepare(notebook, workspace.local_path(notebook))
            runtime = runtime_for(notebook, mounts)
        runtime.load_state({})
        if launch(notebook, runtime, host):
            raise StartError("The scheduler has no room for the editor now.")
    except Exception as exc:
        log.exception("notebook %s failed to restart on %s", notebook_id, host)
        message = exc.user_message if isinstance(exc, StartError) else "Internal error."
        try:
            services.transition(
                notebook,
                State.STOPPING,
                actor=services.SYSTEM,
                code=InfoCode.START_FAILED,
                message=f"The restart failed: {message}",
            )
        except services.InvalidState:
            return
        stop(notebook_id, host)  # saves the workspace, ends FAILED
        return
    # Stopped meanwhile: its stop task stops this editor.
    with contextlib.suppress(services.InvalidState):
        services.mark_running(
            notebook, editor_url=runtime.endpoint.origin, runtime_state=runtime.get_state()
        )


@serialised
def stop(notebook_id: str, host: str, attempt: int = 0) -> None:
    notebook = _load(notebook_id, host, State.STOPPING)
    if notebook is None:
        return
    retrying = notebook.info_code == InfoCode.BACKUP_RETRY
    runtime = runtime_for(notebook)
    saved = stop_editor(notebook, runtime)  # by the runtime's job, on its node
    ship_logs(notebook, runtime)
    _, ended = runtime.ran()
    if ended is not None:  # billed to when the scheduler says the editor ended
        billing.close_interval(notebook, at=ended)
    path = workspace.local_path(notebook)
    if not path.exists():  # a redelivery after the workspace was already saved
        services.finish_stop(notebook, workspace_size=saved and saved.workspace_size)
        return
    push_failure = ""
    if notebook.volumes:
        services.set_info(notebook, InfoCode.PUSHING_DATA, "Pushing the volumes' data.")
        try:
            volumes.push(notebook)
        except volumes.VolumeError as exc:
            # The workspace is still saved; the volume's data stays on this
            # host and is pushed before the next start pulls anything.
            push_failure = f"{exc}. The data is kept on host {host} and pushed at the next start."
    if saved is None:  # here: the runtime saves nothing itself, or its job could not
        services.set_info(notebook, InfoCode.SAVING_WORKSPACE, "Saving the workspace.")
        try:
            saved = workspace.backup(notebook)
        except Exception as exc:
            log.exception(
                "notebook %s: workspace backup failed; the local copy is kept", notebook_id
            )
            _retry_stop(notebook, host, exc, attempt, chained=attempt > 0 or not retrying)
            return
    workspace.remove_local(notebook)
    if push_failure:
        services.finish_stop(
            notebook,
            workspace_size=saved.workspace_size,
            failure=push_failure,
            failure_code=InfoCode.DATA_SYNC_FAILED,
        )
        return
    volumes.remove_local(notebook)
    services.finish_stop(notebook, workspace_size=saved.workspace_size)


def _retry_stop(notebook: Notebook, host: str, exc: Exception, attempt: int, chained: bool) -> None:
    """The object store did not take the workspace (down, unreachable, full): the
    notebook stays STOPPING with its workspace on this host and capacity held, and
    the stop tries again with a growing delay, as long as it takes. One chain of
    retries per notebook: a stop sent again meanwhile (reconcile) tries once."""
    delay = min(settings.NBCLOUD_BACKUP_RETRY_DELAY * 2**attempt, settings.NBCLOUD_BACKUP_RETRY_MAX)
    reason = f"{exc.__class__.__name__}: {exc}"[:300]
    message = (
        f"Saving the workspace failed ({reason}). It is kept on host {host}; the stop tries "
        f"again{f' in {delay} s' if chained else ''} (attempt {attempt + 1})."
    )
    services.record_event(notebook, InfoCode.BACKUP_RETRY, message)
    services.set_info(notebook, InfoCode.BACKUP_RETRY, message)
    if chained:
        dispatch.send(
            dispatch.STOP,
            (str(notebook.pk),),
            {"host": host, "attempt": attempt + 1},
            countdown=delay,
        )


def push_volumes(notebook_id: str, host: str) -> None:
    """A user's datasync: push the RW volumes of a running notebook."""
    notebook = _load(notebook_id, host, State.RUNNING)
    if notebook is None:
        return
    try:
        volumes.push(notebook)
    except volumes.VolumeError as exc:
        services.record_event(notebook, InfoCode.DATA_SYNC_FAILED, str(exc))
        return
    services.record_event(notebook, InfoCode.PUSHING_DATA, "Data sync done.")


@serialised
def delete(notebook_id: str, host: str) -> None:
    notebook = _load(notebook_id, host, State.DELETING)
    if notebook is None:
        return
    stop_discarding(runtime_for(notebook))  # a deleted notebook's workspace is not saved
    workspace.remove_local(notebook)
    volumes.remove_local(notebook)
    services.finish_delete(notebook)


def check_host(host: str) -> None:
    """Notice editors that died: save their workspace and mark them FAILED; and
    start again those a scheduler kept waiting once it runs them."""
    volumes.prune_cache()
    check_waiting(host)
    running = Notebook.objects.select_related("project", "host").filter(
        host__name=host, state=State.RUNNING
    )
    for notebook in running:
        runtime = runtime_for(notebook)
        status = runtime.poll()
        if status is None:
            continue
        ship_logs(notebook, runtime)
        tail = runtime.logs(5).splitlines()
        last = f" Last log line: {tail[-1][:300]}" if tail else ""
        why = runtime.end_reason()
        try:
            services.editor_died(
                notebook,
                f"The editor stopped unexpectedly (exit status {status}).{why and ' ' + why}{last}",
            )
        except services.InvalidState:
            continue  # a user action got there first
        stop(str(notebook.pk), host)


def check_waiting(host: str) -> None:
    """Notebooks QUEUED on this host's scheduler: a new reason is shown, a job the
    scheduler started goes back to STARTING (the start adopts it), a job that ended
    while waiting (cancelled by an administrator) ends the notebook FAILED."""
    waiting = Notebook.objects.select_related("project", "host").filter(
        host__name=host, state=State.QUEUED
    )
    for notebook in waiting:
        runtime = runtime_for(notebook)
        try:
            if runtime.poll() is not None:
                reason = runtime.end_reason() or "The scheduler ended the job before it ran."
                services.fail_start(notebook, reason)
                continue
            reason = runtime.pending()
            if reason is None:
                services.scheduler_started(notebook)
            elif reason != notebook.info_message:
                services.set_info(notebook, InfoCode.WAITING_FOR_CAPACITY, reason)
        except services.InvalidState:
            continue  # a user action got there first
        except StartError:
            log.exception("notebook %s: the scheduler could not be asked", notebook.pk)
