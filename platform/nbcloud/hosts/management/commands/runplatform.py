"""``manage.py runplatform``: the whole platform on one machine, in the foreground.

Starts the embedded broker (unless CELERY_BROKER_URL points elsewhere), then
web (uvicorn), a Celery worker for this host (queues ``control``, ``billing``
and ``host.<NBCLOUD_HOST_NAME>``), the SSH gateway (``runsshgateway``), beat and
flower as child processes under
honcho. Ctrl-C or SIGTERM stops the children, then the broker; notebooks keep
running, and the next start's worker adopts them (their pid is on the row).

Ports: the web listens on ``--port`` (``PORT``, 8000), and the public URL
follows it unless ``NBCLOUD_PUBLIC_URL`` is set. Flower (``NBCLOUD_FLOWER_PORT``,
5555), the worker's metrics (``NBCLOUD_WORKER_METRICS_PORT``, 9101) and the SSH
gateway (``NBCLOUD_SSH_PORT``, 2222; 0: none) move to a
free port when their default is taken (a second platform on the machine); a
port set explicitly, or the web's, that is taken stops the start naming the
variable to change.

It makes the data directory first, as ``manage.py setup`` does (nbcloud.datadir).
One runplatform per data directory: it holds ``DATA_DIR/runplatform.lock``.
Children run in their own sessions, so a runplatform killed with SIGKILL leaves
them running (and holding the web port); the next start finds them by the
NBCLOUD_RUNPLATFORM variable they carry and stops them first.
"""

import contextlib
import fcntl
import os
import secrets
import shlex
import signal
import socket
import sys
from pathlib import Path

import psutil
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from honcho.manager import Manager

from nbcloud.broker import BrokerError, start_embedded_broker
from nbcloud.datadir import prepare
from nbcloud.hosts.sandbox import ensure_bubblewrap

LOCALHOST = "127.0.0.1"
# Set in every child's environment to the data directory of its runplatform.
RUN_MARKER = "NBCLOUD_RUNPLATFORM"
LEFTOVER_STOP_TIMEOUT = 10
# What the children's command lines contain (and notebooks' never do).
CHILD_PROGRAMS = (
    "celery -A nbcloud ",
    "celery -A workers ",
    "uvicorn nbcloud.asgi:application ",
    "manage.py runsshgateway",
)


def _executable(name: str) -> list[str]:
    """The console script ``name`` of this interpreter's environment, or
    ``python -m name`` when the script is not there."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", name]


def _shell(argv: list[str]) -> str:
    # honcho runs each command through /bin/sh; exec lets the signal honcho
    # sends reach the program itself rather than a shell waiting on it.
    return "exec " + shlex.join(argv)


class Command(BaseCommand):
    help = (
        "Run the whole platform on this machine in the foreground: embedded broker, "
        "web (uvicorn), worker, beat and flower. Ctrl-C stops everything."
    )
    # Checked in handle(), once the data directory is made.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument(
            "--port",
            type=int,
            default=None,
            help="web port (default: PORT, else 8000)",
        )
        parser.add_argument("--no-beat", action="store_true", help="do not run celery beat")
        parser.add_argument("--no-flower", action="store_true", help="do not run flower")
        parser.add_argument("--skip-checks", action="store_true", help="skip system checks")

    def handle(self, *args, port: int | None, no_beat: bool, no_flower: bool, **options):
        port = settings.PORT if port is None else port
        if not 0 < port < 65536:
            raise CommandError(f"--port {port} is not a TCP port (1-65535)")
        prepare()
        if not options["skip_checks"]:
            self.check()
        # Until honcho takes over the signals, a SIGTERM must still unwind
        # through the finally below so the broker is shut down.
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)

        if settings.NBCLOUD_RUNTIME == "process":
            ensure_bubblewrap()
            if os.geteuid() != 0:
                self.stderr.write(
                    self.style.WARNING(
                        "not root: the process runtime will refuse to start notebooks "
                        "(each runs as a user of its own, in a network of its own); "
                        "run `sudo make run`, or set NBCLOUD_RUNTIME=docker"
                    )
                )
        data_dir = Path(settings.DATA_DIR).resolve()
        run_lock = _take_run_lock(data_dir)
        try:
            self._run(data_dir, port, no_beat, no_flower)
        except KeyboardInterrupt:
            # Interrupted while starting up, before honcho handles signals.
            self.stderr.write("interrupted")
            sys.exit(130)
        finally:
            os.close(run_lock)

    def _run(self, data_dir: Path, port: int, no_beat: bool, no_flower: bool) -> None:
        self._stop_leftovers(data_dir)
        ports = self._choose_ports(port, no_flower)
        call_command("collectstatic", interactive=False, verbosity=0)
        self._warn_unapplied_migrations()

        root = Path(settings.BASE_DIR)
        socket_path = Path(settings.EMBEDDED_BROKER_SOCKET)
        # EMBEDDED_BROKER is "CELERY_BROKER_URL is not set"; a URL read from
        # CELERY_BROKER_URL_FILE is not the embedded one either.
        configured_url = settings.CELERY_BROKER_URL
        embedded = settings.EMBEDDED_BROKER and configured_url == f"redis+socket://{socket_path}"
        broker = None
        if embedded:
            try:
                broker = start_embedded_broker(socket_path)
            except BrokerError as exc:
                raise CommandError(str(exc)) from exc
            broker_url = broker.url
        else:
            broker_url = configured_url

        try:
            env = self._child_env(root, data_dir, broker_url, ports)
            manager = Manager()
            manager.add_process("web", _shell(self._web(port)), env=env, cwd=str(root))
            manager.add_process("worker", _shell(self._worker()), env=env, cwd=str(root))
            if ports["ssh"]:
                manager.add_process("ssh", _shell(self._ssh(root)), env=env, cwd=str(root))
            if not no_beat:
                manager.add_process("beat", _shell(self._beat()), env=env, cwd=str(root))
            flower_password = None
            if not no_flower:
                flower_password = settings.FLOWER_PASSWORD or secrets.token_urlsafe(12)
                flower_env = dict(
                    env, FLOWER_BASIC_AUTH=f"{settings.FLOWER_USER}:{flower_password}"
                )
                manager.add_process(
                    "flower", _shell(self._flower(ports["flower"])), env=flower_env, cwd=str(root)
                )
            self._banner(ports, broker_url, embedded, no_beat, no_flower, flower_password)
            manager.loop()
        finally:
            if broker is not None:
                self.stdout.write("stopping the embedded broker")
                broker.shutdown()
        if manager.returncode:
            sys.exit(manager.returncode)

    # Children.

    def _child_env(
        self, root: Path, data_dir: Path, broker_url: str, ports: dict[str, int]
    ) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(root / "platform"), str(root)]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["DJANGO_SETTINGS_MODULE"] = os.environ.get("DJANGO_SETTINGS_MODULE", "nbcloud.settings")
        env["NBCLOUD_DATA_DIR"] = str(settings.DATA_DIR)
        env["CELERY_BROKER_URL"] = broker_url
        env["PYTHONUNBUFFERED"] = "1"
        env[RUN_MARKER] = str(data_dir)
        env["PORT"] = str(ports["web"])
        env["NBCLOUD_PUBLIC_URL"] = public_url(ports["web"])
        env["NBCLOUD_FLOWER_PORT"] = str(ports["flower"])
        env["NBCLOUD_WORKER_METRICS_PORT"] = str(ports["metrics"])
        env["NBCLOUD_SSH_PORT"] = str(ports["ssh"])
        return env

    def _choose_ports(self, web: int, no_flower: bool) -> dict[str, int]:
        """The ports of this run: the web's must be free; Flower's and the
        metrics' defaults give way to a free port, an explicit one does not."""
        holder = port_in_use(web)
        if holder is not None:
            raise CommandError(
                f"port {web} on {LOCALHOST} is already in use{holder}: another nbcloud or "
                f"another server listens there. Choose a free port with PORT, e.g. "
                f"`PORT={_suggest(web)} make run` (or `manage.py runplatform --port ...`)"
            )
        ports = {"web": web}
        for name, variable, value, default in (
            ("flower", "NBCLOUD_FLOWER_PORT", settings.FLOWER_PORT, 5555),
            ("metrics", "NBCLOUD_WORKER_METRICS_PORT", settings.NBCLOUD_WORKER_METRICS_PORT, 9101),
            ("ssh", "NBCLOUD_SSH_PORT", settings.NBCLOUD_SSH_PORT, 2222),
        ):
            if value == 0 or (name == "flower" and no_flower):
                ports[name] = value
                continue
            holder = port_in_use(value) if value != web else " (by the web, PORT)"
            if holder is None:
                ports[name] = value
            elif variable in os.environ:
                raise CommandError(
                    f"port {value} on {LOCALHOST} ({variable}) is already in use{holder}: "
                    f"set {variable} to a free port"
                )
            else:
                ports[name] = free_port()
                self.stderr.write(
                    self.style.WARNING(
                        f"port {default} ({name}) is taken{holder}: using {ports[name]} "
                        f"(set {variable} to choose)"
                    )
                )
        return ports

    def _stop_leftovers(self, data_dir: Path) -> None:
        """Stop the children of a runplatform on this data directory that died
        without stopping them (we hold the run lock, so it is not running)."""
        leftovers = []
        for process in psutil.process_iter(["cmdline"]):
            if process.pid == os.getpid():
                continue
            try:
                cmdline = " ".join(process.info["cmdline"] or [])
                if not any(program in cmdline for program in CHILD_PROGRAMS):
                    continue
                if process.environ().get(RUN_MARKER) != str(data_dir):
                    continue
            except psutil.Error:
                continue
            leftovers.append(process)
        if not leftovers:
            return
        self.stderr.write(
            self.style.WARNING(
                f"stopping {len(leftovers)} process(es) left by a previous runplatform: "
                + ", ".join(str(p.pid) for p in leftovers)
            )
        )
        for process in leftovers:
            with contextlib.suppress(psutil.Error):
                process.terminate()
        _, alive = psutil.wait_procs(leftovers, timeout=LEFTOVER_STOP_TIMEOUT)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(alive, timeout=LEFTOVER_STOP_TIMEOUT)

    def _web(self, port: int) -> list[str]:
        return [
            *_executable("uvicorn"),
            "nbcloud.asgi:application",
            "--host",
            LOCALHOST,
            "--port",
            str(port),
        ]

    def _worker(self) -> list[str]:
        host = settings.NBCLOUD_HOST_NAME
        return [
            *_executable("celery"),
            "-A",
            "workers",
            "worker",
            "-E",
            "-Q",
            f"control,billing,host.{host}",
            "--hostname",
            f"{host}@%h",
            "--concurrency",
            "2",
            "--loglevel",
            "INFO",
        ]

    def _ssh(self, root: Path) -> list[str]:
        return [sys.executable, str(root / "manage.py"), "runsshgateway"]

    def _beat(self) -> list[str]:
        return [
            *_executable("celery"),
            "-A",
            "nbcloud",
            "beat",
            "--schedule",
            str(Path(settings.DATA_DIR) / "celerybeat-schedule"),
            "--loglevel",
            "INFO",
        ]

    def _flower(self, port: int) -> list[str]:
        # The credentials travel in FLOWER_BASIC_AUTH (flower reads FLOWER_*
        # variables), not on the command line where `ps` would show them.
        return [
            *_executable("celery"),
            "-A",
            "nbcloud",
            "flower",
            f"--address={LOCALHOST}",
            f"--port={port}",
        ]

    # Output.

    def _banner(self, ports, broker_url, embedded, no_beat, no_flower, flower_password):
        web = f"http://{LOCALHOST}:{ports['web']}"
        host = settings.NBCLOUD_HOST_NAME
        lines = [
            "nbcloud platform",
            f"  Console {web}/  (people sign in; manage.py createuser makes one)",
            f"  API     {web}/api/v1/",
            f"  Docs    {web}/api/v1/docs/",
            f"  Admin   {web}/admin/",
        ]
        public = public_url(ports["web"])
        if public != web:
            lines.append(f"  Public  {public} (NBCLOUD_PUBLIC_URL)")
        if not no_flower:
            if settings.FLOWER_PASSWORD:
                password = "(from NBCLOUD_FLOWER_PASSWORD)"
            else:
                password = f"{flower_password}  (generated for this run)"
            lines.append(
                f"  Flower  http://{LOCALHOST}:{ports['flower']} "
                f"user {settings.FLOWER_USER} password {password}"
            )
        if ports["ssh"]:
            lines.append(
                f"  SSH     {settings.NBCLOUD_SSH_ADDR}:{ports['ssh']} "
                "(ssh <notebook id>@host -p PORT; NBCLOUD_SSH_PORT=0: off)"
            )
        lines.append(f"  Broker  {broker_url}{' (embedded)' if embedded else ''}")
        lines.append(f"  Worker  host {host}, queues control, billing, host.{host}")
        if ports["metrics"]:
            lines.append(
                f"  Metrics http://{settings.NBCLOUD_WORKER_METRICS_ADDR}:{ports['metrics']}"
            )
        if no_beat:
            lines.append("  Beat    off (--no-beat): no billing ticks or reconcile")
        lines.append(
            "Ctrl-C stops the platform; running notebooks keep running and the next start "
            "takes them over (stop them first to stop them)."
        )
        self.stdout.write(self.style.SUCCESS("\n".join(lines)))
        self.stdout.flush()

    def _warn_unapplied_migrations(self) -> None:
        try:
            from django.db import DEFAULT_DB_ALIAS, connections
            from django.db.migrations.executor import MigrationExecutor

            executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
            plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
        except Exception as exc:  # a warning, never a reason not to start
            self.stderr.write(f"could not check migrations: {exc}")
            return
        if plan:
            self.stderr.write(
                self.style.WARNING(
                    f"{len(plan)} migration(s) not applied: run `python manage.py migrate`"
                )
            )


def public_url(port: int) -> str:
    """Where users reach this run: NBCLOUD_PUBLIC_URL, else the web's own address."""
    return os.environ.get("NBCLOUD_PUBLIC_URL", "").rstrip("/") or f"http://{LOCALHOST}:{port}"


def port_in_use(port: int) -> str | None:
    """None when ``port`` is free on loopback, else " (by pid N, NAME)" or "" when
    the holder cannot be told."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As uvicorn binds: a closing connection in TIME_WAIT does not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOCALHOST, port))
        except OSError:
            pass
        else:
            return None
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections("tcp"):
            listening = conn.status == psutil.CONN_LISTEN and conn.laddr
            if listening and conn.laddr.port == port and conn.pid:
                with contextlib.suppress(psutil.Error):
                    return f" (by pid {conn.pid}, {psutil.Process(conn.pid).name()})"
                return f" (by pid {conn.pid})"
    return ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]


def _suggest(port: int) -> int:
    for candidate in range(port + 1, min(port + 100, 65536)):
        if port_in_use(candidate) is None:
            return candidate
    return free_port()


def _take_run_lock(data_dir: Path) -> int:
    """Hold DATA_DIR/runplatform.lock for this process (a POSIX lock: children
    never inherit it, and it goes when this process dies)."""
    lock_path = data_dir / "runplatform.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise CommandError(
            f"another runplatform already runs on the data directory {data_dir} "
            f"(it holds {lock_path}): stop it first, or set NBCLOUD_DATA_DIR"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt
