"""Sessions inside a running notebook's sandbox: what SSH and exec run.

A session joins the editor's own sandbox rather than building a second one: it
enters the namespaces of the sandbox's first process (mount, pid, network, IPC,
UTS, cgroup), so it sees exactly what the editor sees (the same /workspace and
volumes, the same private /tmp, the notebook's processes and network), and it
joins the notebook's cgroup, so its limits count it. Then, as the editor, it
drops to the notebook's uid with no capabilities (`setpriv`, the launcher's own
step) before anything of the user's runs.

The launcher (root) keeps its fixed environment and nothing of the user's on
any command line: the program, its arguments and the notebook's variables go
through an anonymous file, read by a few lines of Debian's Python (`-I`: no
variable, path or user site of the notebook's) that run already as the
notebook's uid, change to /workspace and exec the program.
"""

import contextlib
import ctypes
import json
import os
import socket
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil
from django.conf import settings

from . import cgroups
from . import docker as docker_runtime
from .base import Runtime, StartError
from .docker import DockerRuntime
from .editors import editor_environment
from .process import ProcessRuntime, drop_privileges_argv

NSENTER = "/usr/bin/nsenter"
SETSID = "/usr/bin/setsid"
PYTHON = "/usr/bin/python3"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
SHELL = "/bin/bash"
# The order nsenter is given them in does not matter: it opens all, then enters.
NAMESPACES = {
    "mnt": "--mount",
    "uts": "--uts",
    "ipc": "--ipc",
    "net": "--net",
    "pid": "--pid",
    "cgroup": "--cgroup",
}
EXEC_SHIM = (
    "import json,os,sys\n"
    "with os.fdopen(int(sys.argv[1]),'rb') as f: s=json.load(f)\n"
    "os.closerange(3,os.sysconf('SC_OPEN_MAX'))\n"
    "os.chdir('/workspace')\n"
    "os.execve(s['path'],s['argv'],s['env'])\n"
)
CLONE_NEWNET = 0x40000000


class NotInSandbox(StartError):
    """A session cannot be opened (the notebook is not running here, or its runtime
    cannot hold sessions)."""


@dataclass
class Sandbox:
    """Open handles on a running notebook's namespaces, and what its sessions need."""

    notebook_id: str
    uid: int
    groups: list[Path]
    env: dict[str, str]
    address: str
    namespaces: dict[str, int] = field(default_factory=dict)
    # On the docker runtime: the container the Engine runs sessions in (exec).
    container: str = ""

    def close(self) -> None:
        for fd in self.namespaces.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.namespaces.clear()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _first_inside(launcher: psutil.Process) -> psutil.Process:
    """The sandbox's first process: bwrap's child, in namespaces of its own."""
    own = os.readlink("/proc/self/ns/pid")
    for child in launcher.children():
        with contextlib.suppress(psutil.Error, OSError):
            if os.readlink(f"/proc/{child.pid}/ns/pid") != own:
                return child
    raise NotInSandbox("The notebook's editor is not running: restart the notebook.")


def enter(runtime: Runtime) -> Sandbox:
    """Handles on the sandbox of the notebook `runtime` runs (NotInSandbox when none)."""
    if isinstance(runtime, DockerRuntime):
        return _enter_container(runtime)
    if not isinstance(runtime, ProcessRuntime):
        raise NotInSandbox(
            f"SSH and exec are not available for notebooks on the {runtime.name} runtime.",
            "sessions enter the process and docker runtimes' sandboxes only",
        )
    launcher = runtime._process()
    if launcher is None or "address" not in runtime.state:
        raise NotInSandbox("The notebook's editor is not running: restart the notebook.")
    inside = _first_inside(launcher)
    spec = runtime.spec
    sandbox = Sandbox(
        notebook_id=spec.notebook_id,
        uid=spec.uid,
        groups=cgroups.create(
            spec.notebook_id,
            cpus=spec.cpus,
            memory_bytes=spec.memory_bytes,
            pids=settings.NBCLOUD_NOTEBOOK_PIDS_MAX,
        ),
        env={"CUDA_VISIBLE_DEVICES": ",".join(spec.gpu_uuids), **editor_environment(spec, {})},
        address=runtime.state["address"],
    )
    try:
        for name in NAMESPACES:
            sandbox.namespaces[name] = os.open(
                f"/proc/{inside.pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC
            )
        # The handles are of the process we meant only if it still is that process.
        if not inside.is_running() or inside.ppid() != launcher.pid:
            raise NotInSandbox("The notebook's editor is not running: restart the notebook.")
    except BaseException:
        sandbox.close()
        raise
    return sandbox


def _enter_container(runtime: DockerRuntime) -> Sandbox:
    """A docker notebook: sessions are the Engine's own exec (container_exec), which keeps the
    container's limits, dropped capabilities, no-new-privileges and seccomp profile;
    forwards connect from the container's network namespace."""
    container = runtime._container()
    if container is None or container.status != "running":
        raise NotInSandbox("The notebook's editor is not running: restart the notebook.")
    spec = replace(runtime.spec, env_dir=docker_runtime.ENV_DIR)
    sandbox = Sandbox(
        notebook_id=spec.notebook_id,
        uid=spec.uid,
        groups=[],
        env=editor_environment(spec, {}),
        address=runtime.state.get("address", ""),
        container=container.id,
    )
    pid = container.attrs["State"]["Pid"]
    try:
        sandbox.namespaces["net"] = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        container.reload()
        if container.attrs["State"]["Pid"] != pid:
            raise NotInSandbox("The notebook's editor is not running: restart the notebook.")
    except BaseException:
        sandbox.close()
        raise
    return sandbox


@dataclass(frozen=True)
class Program:
    path: str
    argv: list[str]


def program(command: str | None, subsystem: str | None) -> Program:
    """What an SSH request runs: the sftp server, a command through bash, or bash."""
    if subsystem is not None:
        if subsystem != "sftp":
            raise NotInSandbox(f"The subsystem {subsystem!r} is not served; only sftp is.")
        return Program(SFTP_SERVER, ["sftp-server"])
    if command is not None:
        return Program(SHELL, ["bash", "-c", command])
    # Not a login shell: Debian's /etc/profile would put its own PATH before the
    # environment's.
    return Program(SHELL, ["bash"])


def session_argv(sandbox: Sandbox, spec_fd: int, tty: bool) -> list[str]:
    """The launcher's command for one session; `spec_fd` holds the program (spec_file)."""
    argv = [
        NSENTER,
        *(
            f"{option}=/proc/self/fd/{sandbox.namespaces[name]}"
            for name, option in NAMESPACES.items()
        ),
        "--",
        *drop_privileges_argv(sandbox.uid),
        PYTHON,
        "-I",
        "-S",
        "-c",
        EXEC_SHIM,
        str(spec_fd),
    ]
    if tty:  # the pty on stdin becomes the session's controlling terminal
        argv = [SETSID, "--ctty", *argv]
    return cgroups.join_argv(sandbox.groups, argv)


def spec_file(sandbox: Sandbox, what: Program, extra_env: dict[str, str]) -> int:
    """An anonymous file with the program and its environment, for the shim."""
    fd = os.memfd_create("nbcloud-session", 0)
    env = {**sandbox.env, **extra_env}
    os.write(fd, json.dumps({"path": what.path, "argv": what.argv, "env": env}).encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def launch_fds(sandbox: Sandbox, spec_fd: int) -> tuple[int, ...]:
    """The descriptors the launcher's command needs (session_argv names them)."""
    return (*sandbox.namespaces.values(), spec_fd)


def container_exec(
    sandbox: Sandbox, what: Program, extra_env: dict[str, str], tty: bool
) -> tuple[str, socket.socket]:
    """Start `what` in the notebook's container through the Engine's exec API (as the
    notebook's uid, in /workspace, its variables through the API, never a command
    line). Returns the exec's id and its connected socket: raw with a tty, else
    Docker's multiplexed stream (8-byte frame headers: stream, size)."""
    api = docker_runtime.client().api
    exec_id = api.exec_create(
        sandbox.container,
        [what.path, *what.argv[1:]],
        stdin=True,
        tty=tty,
        user=f"{sandbox.uid}:{sandbox.uid}",
        workdir="/workspace",
        environment={**sandbox.env, **extra_env},
    )["Id"]
    stream = api.exec_start(exec_id, socket=True, tty=tty)
    return exec_id, getattr(stream, "_sock", stream)


# Port forwarding: sockets of the notebook's own network.

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def netns_socket(sandbox: Sandbox) -> socket.socket:
    """A TCP socket of the notebook's network namespace, so that its loopback and own
    address are the notebook's. Made in a thread of its own that enters the
    namespace and ends there (a network namespace is a thread's, not the process's)."""
    made: dict = {}

    def make() -> None:
        try:
            _setns(sandbox.namespaces["net"])
            made["socket"] = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            made["error"] = exc

    thread = threading.Thread(target=make, name=f"netns-{sandbox.notebook_id[:8]}")
    thread.start()
    thread.join()
    if "error" in made:
        raise made["error"]
    return made["socket"]


def forward_target(sandbox: Sandbox, host: str) -> str:
    """The address inside the notebook's network a forward to `host` means; NotInSandbox
    for anything outside the notebook (its own loopback and address only)."""
    if host in ("localhost", "127.0.0.1", "ip6-localhost") or host == sandbox.address:
        return "127.0.0.1" if host != sandbox.address else host
    raise NotInSandbox(
        f"Forwarding reaches only the notebook itself (localhost or {sandbox.address}), not {host}."
    )
