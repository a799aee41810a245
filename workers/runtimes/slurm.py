"""Editors as Slurm jobs: a host that is a Slurm cluster (or one partition of it).

The worker runs on a submit node and never picks a node: it submits one batch
job per notebook with the flavor's request, and Slurm places it. The job runs
`workers.runtimes.slurm_job` on its node, which starts the editor in the very
sandbox of the process runtime (bubblewrap, the notebook's uid, its own network
namespace and cgroup) and publishes where it answers in a file of the data
directory; on SIGTERM (a stop, `scancel`, a time limit, a preemption) it stops
the editor and tears the sandbox down. The job restores the workspace from the
object store before the editor starts and saves it after the editor stopped,
on its node; the worker only records the backup it reports (and saves the
shared copy itself when the job was killed before it could).

Through the CLI (`sbatch`, `squeue`, `scontrol`, `sacct`, `scancel`), not
slurmrestd: every Slurm site has the CLI on its submit nodes and its output
formats are stable across releases, while slurmrestd is an optional daemon
with a versioned API (v0.0.38 in Slurm 22.05, others later) that many sites
do not run and that needs JWT or a local socket set up. The job name
(`nbcloud-<notebook id>`) lets a fresh worker find and adopt the job even if
its state never reached the notebook row.

Assumes what a Slurm cluster has: the data directory (launch files, logs,
endpoints, workspaces) on a filesystem shared with the compute nodes, nbcloud
installed there at the same path, and the worker submitting as root (the job's
launcher needs root to give the editor its own uid and network namespace).
"""

import json
import logging
import os
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from django.conf import settings

from .base import Endpoint, LaunchSpec, Runtime, StartError, log_file, tail_file
from .editors import editor_command
from .process import ProcessRuntime, require_root

log = logging.getLogger(__name__)

ACTIVE = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "RESIZING", "COMPLETING"}
)
CLI_TIMEOUT = 30
# How long `poll` trusts a job it found active: each look forks scontrol and asks
# slurmctld, and a start polls while the editor starts beside it on the same CPUs.
POLL_EVERY = 1.0


class SlurmError(StartError):
    pass


def slurm(*argv: str) -> str:
    """Run a Slurm command; its stdout, or SlurmError with its stderr."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False
        )
    except FileNotFoundError as exc:
        raise SlurmError(
            "This host cannot reach its Slurm cluster.",
            f"{argv[0]} is not installed on the submit node: apt-get install slurm-client",
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise SlurmError("The Slurm cluster does not answer.", f"{argv[0]} timed out") from exc
    if done.returncode != 0:
        raise SlurmError("The Slurm cluster refused the request.", done.stderr.strip())
    return done.stdout


def job_name(notebook_id: str) -> str:
    return f"nbcloud-{notebook_id}"


def job_dir() -> Path:
    return settings.DATA_DIR / "slurm"


def endpoint_file(notebook_id: str, job_id: str) -> Path:
    return job_dir() / f"{notebook_id}.{job_id}.endpoint.json"


def result_file(notebook_id: str, job_id: str) -> Path:
    """What the job did with the workspace (saved, or failed to restore)."""
    return job_dir() / f"{notebook_id}.{job_id}.workspace.json"


def discard_file(notebook_id: str, job_id: str) -> Path:
    """Present: the job must not save the workspace (the notebook is being deleted)."""
    return job_dir() / f"{notebook_id}.{job_id}.discard"


def parse_time(value: str) -> datetime | None:
    """Slurm's local-time stamps (`2026-11-30T22:07:38`) as aware datetimes."""
    if not value or value in ("Unknown", "None", "N/A"):
        return None
    return datetime.fromisoformat(value).astimezone()


@dataclass(frozen=True)
class Job:
    """What slurmctld says of a job."""

    job_id: str
    state: str
    reason: str = ""
    exit_code: str = ""
    node: str = ""
    start: datetime | None = None
    end: datetime | None = None
    partition: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


def show_job(job_id: str) -> Job | None:
    """The job as slurmctld remembers it (MinJobAge after it ended), else None."""
    try:
        out = slurm("scontrol", "show", "job", "-o", job_id)
    except SlurmError as exc:
        if "Invalid job id" in str(exc):
            return None
        raise
    fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
    state = fields.get("JobState", "")
    if state not in ACTIVE:
        # Ended for slurmctld (CANCELLED at once) while its node still stops
        # the processes: the queue says COMPLETING until they are gone.
        listed = slurm("squeue", "-h", "-j", job_id, "-o", "%T").strip()
        if listed == "COMPLETING":
            state = listed
    return Job(
        job_id=job_id,
        state=state,
        reason=fields.get("Reason", ""),
        exit_code=fields.get("ExitCode", ""),
        node=fields.get("BatchHost", ""),
        start=parse_time(fields.get("StartTime", "")),
        end=parse_time(fields.get("EndTime", "")),
        partition=fields.get("Partition", ""),
    )


def accounted_job(job_id: str) -> Job | None:
    """The job as accounting (slurmdbd) recorded it, or None without accounting."""
    try:
        out = slurm(
            "sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State,ExitCode,NodeList,Start,End"
        )
    except SlurmError:
        return None  # accounting storage is disabled on this cluster
    for line in out.splitlines():
        fields = line.split("|")
        if len(fields) == 6 and fields[0] == job_id:
            return Job(
                job_id=job_id,
                state=fields[1].split()[0],
                reason=fields[1],
                exit_code=fields[2],
                node=fields[3],
                start=parse_time(fields[4]),
                end=parse_time(fields[5]),
            )
    return None


def find_job(notebook_id: str) -> str | None:
    """The active job of this notebook, by its name (adoption without saved state)."""
    out = slurm("squeue", "-h", "-n", job_name(notebook_id), "-o", "%i")
    ids = out.split()
    return ids[0] if ids else None


def queue_position(job: Job) -> int:
    """1 for the pending job Slurm would start first in the job's partition."""
    out = slurm("squeue", "-h", "-t", "PENDING", "-p", job.partition, "-o", "%i", "-S", "-p,i")
    ids = out.split()
    return ids.index(job.job_id) + 1 if job.job_id in ids else 0


def launch_values(spec: LaunchSpec) -> dict:
    """The launch file the job reads: the spec as plain values, the editor's secret
    and user variables among them (mode 0600, root's, removed by the job once read)."""
    values = asdict(spec)
    for name in ("env_dir", "workspace"):
        values[name] = str(values[name])
    return values


def cluster_inventory(partition: str) -> dict:
    """What the partition offers in all: its nodes' CPUs, memory and GPUs (GRES)."""
    argv = ["sinfo", "-h", "-N", "-o", "%N|%c|%m|%G"]
    if partition:
        argv += ["-p", partition]
    cpus = memory = 0
    gpus: list[dict] = []
    seen = set()
    for line in slurm(*argv).splitlines():
        node, node_cpus, mem, gres = line.split("|")
        if node in seen:
            continue
        seen.add(node)
        cpus += int(node_cpus)
        memory += int(mem.rstrip("+")) * 1024 * 1024
        for item in gres.split(","):
            kind, _, rest = item.partition(":")
            if kind != "gpu":
                continue
            parts = rest.split("(")[0].split(":")
            kind = parts[0] if len(parts) > 1 else "gpu"
            model = settings.NBCLOUD_SLURM_GPU_MODELS.get(kind, kind)
            for index in range(int(parts[-1])):
                # Slurm assigns the GPUs: these only let the placer and the
                # quota count them.
                gpus.append({"index": len(gpus), "uuid": f"slurm:{node}:{index}", "model": model})
    return {"cpus": cpus, "memory_bytes": memory, "gpus": gpus}


class SlurmRuntime(Runtime):
    name = "slurm"
    restores_workspace = True
    _active_since: float = -POLL_EVERY

    @property
    def job_id(self) -> str | None:
        return self.state.get("job_id")

    @property
    def log_path(self) -> Path:
        return log_file(self.spec.notebook_id)

    @property
    def endpoint(self) -> Endpoint | None:
        if "port" not in self.state:
            self._read_endpoint()
        if "port" not in self.state:
            return None
        return Endpoint(self.state["address"], self.state["port"], self.spec.base_url)

    def _read_endpoint(self) -> None:
        if not self.job_id:
            return
        try:
            published = json.loads(endpoint_file(self.spec.notebook_id, self.job_id).read_text())
        except (OSError, ValueError):
            return
        self.state.update(published)

    def job(self) -> Job | None:
        if not self.job_id:
            return None
        return show_job(self.job_id) or accounted_job(self.job_id)

    def check_environment(self, framework_id: str, version: str) -> None:
        ProcessRuntime(self.spec).check_environment(framework_id, version)

    def start(self) -> Endpoint | None:
        job = self.job()
        if job is None or not job.active:
            adopted = find_job(self.spec.notebook_id)
            if adopted:  # submitted by a worker that died before saving its state
                self.state = {"job_id": adopted}
                job = self.job()
        if job is None or not job.active:
            require_root()
            # What the job would find missing, said now (code-server, an unknown editor).
            editor_command(self.spec, 0, "0.0.0.0")
            self.state = {"job_id": self._submit()}
        self._wait_placed()
        return self.endpoint

    def _submit(self) -> str:
        folder = job_dir()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        launch = folder / f"{self.spec.notebook_id}.launch.json"
        staging = launch.with_suffix(".tmp")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(launch_values(self.spec), out)
        staging.replace(launch)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            "sbatch",
            "--parsable",
            f"--job-name={job_name(self.spec.notebook_id)}",
            f"--comment=nbcloud notebook {self.spec.notebook_id} ({self.spec.project})",
            "--nodes=1",
            "--ntasks=1",
            # Never run again by Slurm on its own (a node failure, a preemption): the
            # launch file is gone, and the notebook ends FAILED with the reason.
            "--no-requeue",
            f"--cpus-per-task={max(1, self.spec.cpus)}",
            f"--output={self.log_path}",
            "--open-mode=append",
            "--chdir=/",
            f"--export=ALL,NBCLOUD_DATA_DIR={settings.DATA_DIR},"
            f"NBCLOUD_SUBMIT_HOST={socket.gethostname()}",
        ]
        if self.spec.memory_bytes:
            argv.append(f"--mem={max(1, self.spec.memory_bytes // 1024**2)}M")
        if self.spec.gpu_uuids:
            argv.append(f"--gres=gpu:{len(self.spec.gpu_uuids)}")
        if settings.NBCLOUD_SLURM_PARTITION:
            argv.append(f"--partition={settings.NBCLOUD_SLURM_PARTITION}")
        if self.spec.time_limit_minutes:
            argv.append(f"--time={self.spec.time_limit_minutes}")
        argv += [
            "--wrap",
            f"exec {settings.NBCLOUD_SLURM_PYTHON} -m workers.runtimes.slurm_job {launch}",
        ]
        job_id = slurm(*argv).strip().split(";")[0]
        log.info("notebook %s: Slurm job %s submitted", self.spec.notebook_id, job_id)
        return job_id

    def _wait_placed(self) -> None:
        """Until the job's editor published its endpoint, Slurm left it pending, or it
        ended; a job Slurm starts at once answers within this call."""
        deadline = time.monotonic() + settings.NBCLOUD_SLURM_START_WAIT
        asked = -POLL_EVERY
        while time.monotonic() < deadline:
            if self.endpoint is not None:
                return
            # The endpoint file is cheap to look at; Slurm, once a second.
            if time.monotonic() - asked >= POLL_EVERY:
                asked = time.monotonic()
                job = self.job()
                if job is None or not job.active:
                    return
                if job.state == "PENDING" and job.reason not in ("None", ""):
                    return
            time.sleep(0.05)

    def pending(self) -> str | None:
        """Why Slurm has not started the job yet, with its place in line; None otherwise."""
        job = self.job()
        if job is None or job.state != "PENDING":
            return None
        position = queue_position(job)
        where = f", position {position} in partition {job.partition}" if position else ""
        return f"Waiting in Slurm: {job.reason}{where}."

    def poll(self) -> int | None:
        if time.monotonic() - self._active_since < POLL_EVERY:
            return None
        job = self.job()
        if job is not None and job.active:
            self._active_since = time.monotonic()
        if job is None:
            return 0 if not self.job_id else 1
        if job.active:
            return None
        code, _, signal = job.exit_code.partition(":")
        if int(code or 0):
            return int(code)
        if int(signal or 0):
            return 128 + int(signal)
        return 0 if job.state == "COMPLETED" else 1

    def _ended_job(self) -> Job | None:
        """The job as Slurm recorded it: accounting's record once it has the job's end
        (it says who cancelled), else slurmctld's, which has it first (slurmdbd
        learns of an end a moment later) and forgets it after MinJobAge."""
        accounted = accounted_job(self.job_id)
        if accounted is not None and not accounted.active:
            return accounted
        return show_job(self.job_id) or accounted

    def end_reason(self) -> str:
        """What Slurm says ended the job (CANCELLED by an admin, TIMEOUT, NODE_FAIL...)."""
        if not self.job_id:
            return ""
        job = self._ended_job()
        if job is None or job.active:
            return ""
        # sacct says who cancelled (`CANCELLED by 0`); scontrol only what happened.
        how = job.reason if job.reason not in ("", "None") else job.state
        return f"Slurm job {job.job_id} ended {how} (exit code {job.exit_code})."

    def ran(self) -> tuple[datetime | None, datetime | None]:
        """When the job started and ended as Slurm recorded it (accounting first)."""
        if not self.job_id:
            return None, None
        job = self._ended_job()
        if job is None or job.state == "PENDING":
            return None, None
        return job.start, (None if job.active else job.end)

    def stop(self, timeout: float) -> None:
        if not self.job_id:
            return
        job = self.job()
        if job is not None and job.state == "PENDING":
            slurm("scancel", self.job_id)  # nothing ran, nothing to save
        elif job is not None and job.active:
            # SIGTERM to the launcher alone (the batch step): it stops the editor,
            # saves the workspace and ends the job itself, with no KillWait to beat.
            # Past the wait, Slurm's own cancel, then its KILL: the worker saves.
            slurm("scancel", "--batch", "--signal=TERM", self.job_id)
            self._wait_ended(timeout + settings.NBCLOUD_SLURM_SAVE_WAIT)
            if self._still_active():
                log.warning("Slurm job %s did not end after its stop: cancelled", self.job_id)
                slurm("scancel", self.job_id)
                self._wait_ended(timeout + 10)
            if self._still_active():
                slurm("scancel", "--signal=KILL", "--full", self.job_id)
                self._wait_ended(10)
        self._active_since = -POLL_EVERY
        endpoint_file(self.spec.notebook_id, self.job_id).unlink(missing_ok=True)
        (job_dir() / f"{self.spec.notebook_id}.launch.json").unlink(missing_ok=True)

    def _wait_ended(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._still_active():
            time.sleep(0.2)

    def workspace_result(self) -> dict:
        if not self.job_id:
            return {}
        try:
            return json.loads(result_file(self.spec.notebook_id, self.job_id).read_text())
        except (OSError, ValueError):
            return {}

    def forget_workspace_result(self) -> None:
        if self.job_id:
            result_file(self.spec.notebook_id, self.job_id).unlink(missing_ok=True)
            discard_file(self.spec.notebook_id, self.job_id).unlink(missing_ok=True)

    def discard_workspace(self) -> None:
        if self.job_id:
            job_dir().mkdir(mode=0o700, parents=True, exist_ok=True)
            discard_file(self.spec.notebook_id, self.job_id).touch()

    def _still_active(self) -> bool:
        job = self.job()
        return job is not None and job.active

    def _local(self) -> ProcessRuntime | None:
        """The job's editor as a process of this machine, when the job runs here."""
        self._read_endpoint()
        if "pid" not in self.state or self.state.get("node") != socket.gethostname():
            return None
        return ProcessRuntime(self.spec, self.state)

    def stats(self) -> dict:
        if self.poll() is not None:
            return {"running": False}
        local = self._local()
        stats = local.stats() if local is not None else {}
        return {**stats, "running": True, "slurm_job": self.job_id}

    def logs(self, tail: int = 100) -> str:
        return tail_file(self.log_path, tail)

    def log_version(self) -> object | None:
        try:
            info = self.log_path.stat()
        except FileNotFoundError:
            return ()
        return (info.st_ino, info.st_size, info.st_mtime_ns)
