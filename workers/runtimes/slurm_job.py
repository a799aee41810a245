"""What a notebook's Slurm job runs on its node: `python -m workers.runtimes.slurm_job FILE`.

It reads (and removes) the launch file the worker wrote, starts the editor in
the process runtime's sandbox, publishes the editor's address in the data
directory, and stays in the foreground while the editor runs, so the job lasts
as long as the editor. SIGTERM (a stop, `scancel`, a time limit, a
preemption) stops the editor and removes its sandbox; the job's exit status is
the editor's.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path


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


def main(launch: Path) -> int:
    # The settings only, not django.setup(): the sandbox needs no app, no model and
    # no database, and loading them would add a second to every start.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nbcloud.settings")
    from django.conf import settings

    from workers.runtimes.base import LaunchSpec, Mount
    from workers.runtimes.process import ProcessRuntime
    from workers.runtimes.slurm import endpoint_file

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
    runtime = ProcessRuntime(spec)
    # Slurm signals every process it tracks, the sandbox's outer bwrap too; when that
    # one ends first, what runs inside would outlive the job unless it dies with it.
    runtime.sandbox_dies_with_parent = True
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    runtime.start()
    job_id = os.environ["SLURM_JOB_ID"]
    published = endpoint_file(spec.notebook_id, job_id)
    staging = published.with_suffix(".tmp")
    staging.write_text(json.dumps({**runtime.get_state(), "node": socket.gethostname()}))
    staging.replace(published)
    print(
        f"nbcloud: editor of notebook {spec.notebook_id} started in Slurm job {job_id}", flush=True
    )
    while not stopping.wait(0.5):
        if runtime.poll() is not None:
            break
    status = runtime.poll()
    runtime.stop(settings.NBCLOUD_EDITOR_STOP_TIMEOUT)
    published.unlink(missing_ok=True)
    return status or 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
