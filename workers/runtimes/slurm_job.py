"""What a notebook's Slurm job runs on its node: `python -m workers.runtimes.slurm_job FILE`.

It reads (and removes) the launch file the worker wrote, makes the workspace
ready (the shared copy, else the backup the worker named, restored from the
object store here), starts the editor in the process runtime's sandbox,
publishes the editor's address in the data directory, and stays in the
foreground while the editor runs, so the job lasts as long as the editor.
SIGTERM (a stop, `scancel`, a time limit, a preemption) stops the editor and
removes its sandbox; then the job saves the workspace to the object store and
publishes what it saved, which the worker records as the notebook's backup. A
job killed before it could save leaves the workspace to the worker's own save.
The job's exit status is the editor's.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace


def _gpus(values: dict) -> dict:
    """The GPUs Slurm allotted this job (SLURM_JOB_GPUS: indices on the node), as the
    sandbox's device nodes and CUDA's UUIDs."""
    indices = [i for i in os.environ.get("SLURM_JOB_GPUS", "").split(",") if i]
    if not indices:
        return {"gpu_uuids": (), "gpu_devices": ()}
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=index,minor_number,uuid", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    rows = {
        index: (minor, uuid)
        for index, minor, uuid in (line.split(", ") for line in out.splitlines())
    }
    chosen = [rows[i] for i in indices if i in rows]
    return {
        "gpu_uuids": tuple(uuid for _, uuid in chosen),
        "gpu_devices": tuple(f"nvidia{minor}" for minor, _ in chosen),
    }


def node_address() -> str | None:
    """The address the cluster reaches this node on (its NodeAddr), when this is not
    the submit node whose worker (and gateway) reach the editor directly."""
    if socket.gethostname() == os.environ.get("NBCLOUD_SUBMIT_HOST"):
        return None
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    out = subprocess.run(
        ["scontrol", "show", "node", "-o", node],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
    return fields.get("NodeAddr") or node


def _publish(path: Path, values: dict) -> None:
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(values))
    staging.replace(path)


def _say(message: str) -> None:
    print(f"nbcloud: {message}", flush=True)


def prepare_workspace(spec, job_id: str, result: Path) -> bool:
    """The workspace ready on this node; False (the reason published) when the backup
    could not be restored."""
    from workers import workspace

    latest = SimpleNamespace(**spec.restore) if spec.restore else None
    began = time.monotonic()
    try:
        restoring = latest is not None and not spec.workspace.exists()
        workspace.materialise(spec.workspace, spec.uid, latest)
    except Exception as exc:
        kind = workspace.failure_kind(exc)
        detail = exc.user_message if kind == "unsafe" else f"{exc.__class__.__name__}: {exc}"
        _publish(result, {"restore_failed": {"kind": kind, "detail": detail[:2000]}})
        _say(f"restoring backup {latest.pk} failed in Slurm job {job_id}: {detail[:300]}")
        return False
    if restoring:
        _say(
            f"workspace restored from backup {latest.pk} in Slurm job {job_id} "
            f"in {time.monotonic() - began:.1f} s"
        )
    return True


def save_workspace(spec, job_id: str, result: Path) -> None:
    """The workspace into a new archive of the object store, published for the worker;
    nothing when the worker asked for none (a delete) or there is none."""
    from workers import workspace
    from workers.runtimes.slurm import discard_file

    if discard_file(spec.notebook_id, job_id).exists() or not spec.workspace.exists():
        return
    began = time.monotonic()
    try:
        saved = workspace.write_archive(
            spec.workspace, workspace.archive_name(spec.project, spec.notebook_id)
        )
    except Exception as exc:  # the worker saves the shared copy instead, with retries
        _say(f"saving the workspace failed in Slurm job {job_id}: {exc.__class__.__name__}: {exc}")
        return
    _publish(result, {"saved": saved})
    _say(
        f"workspace saved as {saved['storage_name']} ({saved['size']} bytes) in Slurm job "
        f"{job_id} in {time.monotonic() - began:.1f} s"
    )


def main(launch: Path) -> int:
    # The settings only, not django.setup(): the sandbox and the workspace need no
    # app, no model and no database, and loading them would add a second to every
    # start.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nbcloud.settings")
    from django.conf import settings

    from workers.runtimes.base import LaunchSpec, Mount
    from workers.runtimes.process import ProcessRuntime
    from workers.runtimes.slurm import endpoint_file, result_file

    values = json.loads(launch.read_text())
    launch.unlink()
    values.update(
        env_dir=Path(values["env_dir"]),
        workspace=Path(values["workspace"]),
        mounts=tuple(Mount(**mount) for mount in values["mounts"]),
        env_vars=dict(values["env_vars"]),
        **_gpus(values),
    )
    spec = LaunchSpec(**values)
    job_id = os.environ["SLURM_JOB_ID"]
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    result = result_file(spec.notebook_id, job_id)
    if not prepare_workspace(spec, job_id, result):
        return 1
    status = None
    if not stopping.is_set():
        runtime = ProcessRuntime(spec)
        # Slurm signals every process it tracks, the sandbox's outer bwrap too; when
        # that one ends first, what runs inside would outlive the job unless it dies
        # with it.
        runtime.sandbox_dies_with_parent = True
        runtime.start()
        state = {**runtime.get_state(), "node": socket.gethostname()}
        relay = None
        address = node_address()
        if address:  # another node than the worker's: the editor is reached through it
            from workers.runtimes.relay import Relay

            relay = Relay(address, state["address"], state["port"])
            state.update(address=address, port=relay.port)
        published = endpoint_file(spec.notebook_id, job_id)
        _publish(published, state)
        _say(
            f"editor of notebook {spec.notebook_id} started in Slurm job {job_id} on "
            f"{state['node']}, answering on {state['address']}:{state['port']}"
        )
        while not stopping.wait(0.5):
            if runtime.poll() is not None:
                break
        status = runtime.poll()
        runtime.stop(settings.NBCLOUD_EDITOR_STOP_TIMEOUT)
        if relay is not None:
            relay.close()
        published.unlink(missing_ok=True)
    save_workspace(spec, job_id, result)
    return status or 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
