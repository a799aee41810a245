"""Editors as sandboxed processes on this host (the embedded default).

Each editor runs under bubblewrap as its notebook's own unprivileged uid, with
the notebook's workspace bound at /workspace and a private /tmp and pid
namespace, so notebooks on one host cannot read each other's files. Editors
are started in their own session and not tied to the worker's life, so a
worker restart does not take running notebooks down; the pid (with its start
time, against pid reuse) is the runtime state a fresh worker takes over.
"""

import contextlib
import os
import socket
import time
from pathlib import Path

import psutil
from django.conf import settings

from . import cgroups
from .base import Endpoint, LaunchSpec, Runtime, StartError, log_file, tail_file
from .editors import editor_command, editor_environment


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sandbox_argv(spec: LaunchSpec, argv: list[str]) -> list[str]:
    prefix = [
        "bwrap",
        "--bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--perms",
        "1777",
        "--tmpfs",
        "/tmp",
        "--bind",
        str(spec.workspace),
        "/workspace",
        "--chdir",
        "/workspace",
        "--unshare-pid",
    ]
    for mount in spec.mounts:
        prefix += ["--ro-bind" if mount.read_only else "--bind", mount.source, mount.target]
    if os.geteuid() == 0:
        prefix += ["setpriv", f"--reuid={spec.uid}", f"--regid={spec.uid}", "--clear-groups"]
    return prefix + argv


def _running(proc: psutil.Process) -> bool:
    """Alive, not a zombie: a zombie has exited, whoever is to reap it."""
    try:
        if proc.status() != psutil.STATUS_ZOMBIE:
            return True
    except psutil.NoSuchProcess:
        return False
    with contextlib.suppress(ChildProcessError):
        os.waitpid(proc.pid, os.WNOHANG)  # reap it when it is ours
    return False


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited; return those still running."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _running(p)]
    return alive


class ProcessRuntime(Runtime):
    name = "process"

    @property
    def log_path(self) -> Path:
        return log_file(self.spec.notebook_id)

    @property
    def endpoint(self) -> Endpoint | None:
        if "port" not in self.state:
            return None
        return Endpoint("127.0.0.1", self.state["port"], self.spec.base_url)

    def _process(self) -> psutil.Process | None:
        pid = self.state.get("pid")
        if not pid:
            return None
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - self.state.get("create_time", 0)) > 1:
                return None  # the pid was reused by another process
            if proc.status() == psutil.STATUS_ZOMBIE:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                return None
            return proc
        except psutil.NoSuchProcess:
            return None

    def check_environment(self, framework_id: str, version: str) -> None:
        from workers import environments

        if not environments.is_built(framework_id, version):
            raise StartError(
                f"Environment {framework_id} {version} is not installed on host "
                f"{settings.NBCLOUD_HOST_NAME}.",
                f"run: manage.py buildenvs {framework_id}:{version}",
            )

    def start(self) -> Endpoint:
        if self._process() is not None:
            return self.endpoint
        port = free_port()
        argv, secret_env = editor_command(self.spec, port)
        env = {
            "CUDA_VISIBLE_DEVICES": ",".join(self.spec.gpu_uuids),
            **editor_environment(self.spec, secret_env),
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            try:
                groups = cgroups.create(
                    self.spec.notebook_id, cpus=self.spec.cpus, memory_bytes=self.spec.memory_bytes
                )
                proc = psutil.Popen(
                    cgroups.join_argv(groups, sandbox_argv(self.spec, argv)),
                    stdin=open(os.devnull, "rb"),  # noqa: SIM115
                    stdout=log,
                    stderr=log,
                    env=env,
                    cwd="/",
                    start_new_session=True,
                )
            except FileNotFoundError as exc:
                raise StartError(
                    "This host cannot sandbox editors (bubblewrap is missing).",
                    f"{exc}; install it with: apt-get install bubblewrap",
                ) from exc
        self.state = {"pid": proc.pid, "create_time": proc.create_time(), "port": port}
        return self.endpoint

    def poll(self) -> int | None:
        if self._process() is not None:
            return None
        pid = self.state.get("pid")
        if not pid:
            return 0
        with contextlib.suppress(ChildProcessError):
            _, status = os.waitpid(pid, os.WNOHANG)
            if status:
                return os.waitstatus_to_exitcode(status)
        return 1

    def stop(self, timeout: float) -> None:
        proc = self._process()
        if proc is None:
            cgroups.remove(self.spec.notebook_id)
            return
        # The whole tree: the sandbox, the editor and its kernels, which may
        # sit in sessions of their own.
        tree = [proc, *proc.children(recursive=True)]
        for member in tree:
            with contextlib.suppress(psutil.Error):
                member.terminate()
        alive = _wait_gone(tree, timeout)
        for member in alive:
            with contextlib.suppress(psutil.Error):
                member.kill()
        _wait_gone(alive, 5)
        cgroups.remove(self.spec.notebook_id)

    def stats(self) -> dict:
        proc = self._process()
        if proc is None:
            return {"running": False}
        procs = [proc, *proc.children(recursive=True)]
        rss, cpu = 0, 0.0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                rss += p.memory_info().rss
                times = p.cpu_times()
                cpu += times.user + times.system
        stats = {"running": True, "processes": len(procs), "memory_bytes": rss, "cpu_seconds": cpu}
        enforced = cgroups.limits(self.spec.notebook_id)
        if enforced.get("memory_bytes"):
            stats["memory_limit_bytes"] = enforced["memory_bytes"]
        return stats

    def logs(self, tail: int = 100) -> str:
        return tail_file(self.log_path, tail)
