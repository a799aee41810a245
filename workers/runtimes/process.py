"""Editors as sandboxed processes on this host (the embedded default).

Each editor runs under bubblewrap as its notebook's own unprivileged uid, with
the notebook's workspace bound at /workspace and a private /tmp and pid
namespace, so notebooks on one host cannot read each other's files. Editors
are started in their own session and not tied to the worker's life, so a
worker restart does not take running notebooks down; the pid (with its start
time, against pid reuse) is the runtime state a fresh worker takes over.
"""

import contextlib
import logging
import os
import shutil
import socket
import time
from pathlib import Path

import psutil
from django.conf import settings

from . import cgroups, network
from .base import Endpoint, LaunchSpec, Runtime, StartError, log_file, tail_file
from .editors import editor_command, editor_environment

log = logging.getLogger(__name__)

# Found once, on the worker's own PATH (the operator's), never on a notebook's.
BWRAP = shutil.which("bwrap") or "/usr/bin/bwrap"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# System directories, read-only in every sandbox; on a merged-/usr system the
# top-level ones are symlinks into /usr and are recreated as such.
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc")
GPU_SHARED_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")


def _system_binds() -> list[str]:
    args = []
    for name in SYSTEM_DIRS:
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    return args


def interpreter_home(env_dir: Path) -> Path | None:
    """The installation of the Python an environment (a venv) was made from, when it
    lies outside the system folders the sandbox sees anyway (NBCLOUD_ENV_PYTHON=
    /opt/python3.12/bin/python3): the venv's python links to it and its standard
    library is there. None for Debian's /usr/bin/python3, or no pyvenv.cfg."""
    try:
        lines = (env_dir / "pyvenv.cfg").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "home" and value.strip():
            prefix = Path(value.strip()).parent
            if len(prefix.parts) > 1 and prefix.parts[1] not in SYSTEM_DIRS:
                return prefix
    return None


def _ro_binds(spec: LaunchSpec) -> list[str]:
    """What the editor needs to read besides the system: its environment (and the
    Python it was made from, when that is not the system's), and for VS Code
    code-server and the Node.js that runs it."""
    paths = [spec.env_dir]
    home = interpreter_home(spec.env_dir)
    if home is not None:
        paths.append(home)
    if spec.editor_id == "vscode":
        from workers import code_server

        paths.append(Path(settings.NBCLOUD_CODE_SERVER_DIR))
        node = code_server.installed_node()
        if node and not Path(node).resolve().is_relative_to("/usr"):
            paths.append(Path(node).resolve().parent.parent)
    args, made = [], set()
    for path in dict.fromkeys(paths):
        if not path.exists():
            continue
        # bwrap would make missing parents 0700 (root's): make them traversable.
        for parent in reversed(path.parents[:-1]):
            if parent not in made and parent.parts[1] not in SYSTEM_DIRS:
                made.add(parent)
                args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--ro-bind", str(path), str(path)]
    return args


def identity_files(uid: int) -> dict[str, Path]:
    """An /etc/passwd and /etc/group that name the notebook's user (`nbuser`, home
    /workspace) and none of the host's: programs that look their user up (OpenSSH's
    sftp-server, `whoami`, shells' prompts) find it. {"passwd": path, "group": path}."""
    folder = settings.NBCLOUD_SANDBOX_DIR / "users"
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"nbuser:x:{uid}:{uid}:notebook:/workspace:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "group": f"root:x:0:\nnbuser:x:{uid}:\nnogroup:x:65534:\n",
    }
    paths = {}
    for name, text in files.items():
        path = paths[name] = folder / f"{uid}.{name}"
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.chmod(0o644)
            tmp.replace(path)
    return paths


def _identity_binds(uid: int) -> list[str]:
    args = []
    for name, path in identity_files(uid).items():
        args += ["--ro-bind", str(path), f"/etc/{name}"]
    return args


def gpu_device_binds(spec: LaunchSpec) -> list[str]:
    """The notebook's own GPUs' device nodes, and the driver's shared ones, only."""
    if not spec.gpu_devices:
        return []
    root = Path(settings.NBCLOUD_DEVICE_ROOT)
    args = []
    for name in (*spec.gpu_devices, *GPU_SHARED_NODES):
        if (root / name).exists():
            args += ["--dev-bind", str(root / name), f"/dev/{name}"]
    return args


def sandbox_argv(
    spec: LaunchSpec, argv: list[str], env_fd: int | None = None, die_with_parent: bool = False
) -> list[str]:
    """bubblewrap around `argv`: a filesystem of the notebook's own (system and
    environment read-only, the workspace and volumes read-write, private /tmp,
    /var/tmp and /dev/shm, a /dev with only its own GPUs), its own pid, IPC and
    UTS namespaces, then the notebook's uid with no capabilities. The editor's
    environment is read from `env_fd` (NUL-separated `--setenv` arguments), so
    neither user variables nor the editor's secret appear on a command line or
    in the launcher's own environment. With `die_with_parent`, the sandbox is
    killed when its launcher ends (a Slurm job's launcher: the job is the
    editor's lifetime), however it ends."""
    prefix = [
        BWRAP,
        *_system_binds(),
        "--ro-bind",
        str(network.resolv_conf()),
        "/etc/resolv.conf",
        *_identity_binds(spec.uid),
        *_ro_binds(spec),
        "--ro-bind",
        "/sys",
        "/sys",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        *gpu_device_binds(spec),
        "--perms",
        "1777",
        "--tmpfs",
        "/dev/shm",
        "--perms",
        "1777",
        "--tmpfs",
        "/tmp",
        "--perms",
        "0755",
        "--dir",
        "/var",
        "--perms",
        "1777",
        "--tmpfs",
        "/var/tmp",
        "--bind",
        str(spec.workspace),
        "/workspace",
        "--chdir",
        "/workspace",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "notebook",
        "--new-session",
        "--clearenv",
    ]
    if die_with_parent:
        prefix.append("--die-with-parent")
    if env_fd is not None:
        prefix += ["--args", str(env_fd)]
    for mount in spec.mounts:
        prefix += ["--ro-bind" if mount.read_only else "--bind", mount.source, mount.target]
    return [*prefix, "--", *drop_privileges_argv(spec.uid), *argv]


def drop_privileges_argv(uid: int) -> list[str]:
    """The notebook's uid and gid, no other group, no capabilities, no_new_privs."""
    return [
        "/usr/bin/setpriv",
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
    ]


def environment_file(env: dict[str, str]) -> int:
    """An anonymous file holding `--setenv NAME VALUE` for each variable, for bwrap's
    `--args`; the caller passes the descriptor to bwrap and closes it."""
    fd = os.memfd_create("nbcloud-env", 0)
    data = b"".join(
        b"--setenv\0" + name.encode() + b"\0" + value.encode() + b"\0"
        for name, value in env.items()
    )
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def require_root() -> None:
    """Notebooks run as uids of their own, which only a root host worker can give them;
    never as the platform's own user, which could read its secrets and database."""
    if os.geteuid() != 0:
        raise StartError(
            "This host cannot isolate notebooks: its worker does not run as root.",
            "the process runtime needs root to run each notebook as its own uid in its own "
            "network namespace; run the host worker as root, or use the docker runtime",
        )


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
    # Off: an editor outlives a worker that dies, and the next one adopts it.
    sandbox_dies_with_parent = False

    @property
    def log_path(self) -> Path:
        return log_file(self.spec.notebook_id)

    @property
    def endpoint(self) -> Endpoint | None:
        if "port" not in self.state:
            return None
        return Endpoint(self.state["address"], self.state["port"], self.spec.base_url)

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
        require_root()
        leftovers = cgroups.kill_leftovers(self.spec.notebook_id, str(self.spec.workspace))
        if leftovers:
            log.warning(
                "notebook %s: killed %d unrecorded process(es) of an earlier launch",
                self.spec.notebook_id,
                len(leftovers),
            )
        port = free_port()
        # Every address of its own namespace: its own loopback, and its own eth0,
        # where the gateway (on the host) reaches it.
        argv, secret_env = editor_command(self.spec, port, "0.0.0.0")
        env = {
            "CUDA_VISIBLE_DEVICES": ",".join(self.spec.gpu_uuids),
            **editor_environment(self.spec, secret_env),
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        net = network.create(self.spec.notebook_id, self.spec.uid)
        env_fd = environment_file(env)
        try:
            with open(self.log_path, "ab") as output:
                groups = cgroups.create(
                    self.spec.notebook_id,
                    cpus=self.spec.cpus,
                    memory_bytes=self.spec.memory_bytes,
                    pids=settings.NBCLOUD_NOTEBOOK_PIDS_MAX,
                )
                proc = psutil.Popen(
                    cgroups.join_argv(
                        groups,
                        network.enter_argv(
                            self.spec.notebook_id,
                            sandbox_argv(self.spec, argv, env_fd, self.sandbox_dies_with_parent),
                        ),
                    ),
                    stdin=open(os.devnull, "rb"),  # noqa: SIM115
                    stdout=output,
                    stderr=output,
                    env=network.LAUNCH_ENV,
                    cwd="/",
                    start_new_session=True,
                    pass_fds=(env_fd,),
                )
        except FileNotFoundError as exc:
            network.destroy(net)
            raise StartError(
                "This host cannot sandbox editors (bubblewrap is missing).",
                f"{exc}; install it with: apt-get install bubblewrap",
            ) from exc
        except BaseException:
            network.destroy(net)
            raise
        finally:
            os.close(env_fd)
        self.state = {"pid": proc.pid, "create_time": proc.create_time(), "port": port, **net}
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
            network.destroy(self.state)
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
        network.destroy(self.state)

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

    def log_version(self) -> object | None:
        try:
            info = self.log_path.stat()
        except FileNotFoundError:
            return ()
        return (info.st_ino, info.st_size, info.st_mtime_ns)
