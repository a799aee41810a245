"""The host's SSH endpoint: the far end of the platform's SSH gateway.

The host worker serves it (NBCLOUD_SSH_HOST_ADDR:NBCLOUD_SSH_HOST_PORT, any
free port by default) and registers where, with its host key, so the gateway
can check it is talking to this host. Only the platform gets in: the user is a
notebook id and the password the relay secret (derived from SECRET_KEY); the
gateway has already decided who may open that notebook. Each session runs inside
the notebook's sandbox (runtimes/sessions.py), with a pty when one was asked
for; direct TCP/IP channels connect from inside the notebook's network, to its
own loopback or address only. Nothing else is served: no remote forwarding, no
agent, no X11.
"""

import asyncio
import contextlib
import fcntl
import hmac
import logging
import os
import signal
import struct
import termios
import threading

import asyncssh
from asyncssh.forward import SSHForwarder
from django.conf import settings

from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import State
from nbcloud.ssh import endpoints, keys, processes
from nbcloud.ssh.endpoints import in_thread

from .lifecycle import runtime_for
from .runtimes import docker as docker_runtime
from .runtimes import network, sessions

log = logging.getLogger(__name__)
CHUNK = 256 * 1024
PTY_DRAIN_AFTER_EXIT = 1.0


def _runtime(notebook_id: str, host: str):
    notebook = (
        Notebook.objects.select_related("project", "host")
        .filter(pk=notebook_id, host__name=host, state=State.RUNNING)
        .first()
    )
    if notebook is None:
        raise sessions.NotInSandbox("The notebook is not running on this host.")
    return runtime_for(notebook)


def _open_sandbox(notebook_id: str, host: str) -> sessions.Sandbox:
    return sessions.enter(_runtime(notebook_id, host))


class EndpointServer(asyncssh.SSHServer):
    def __init__(self, host: str):
        self.host = host
        self.notebook_id = ""

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        if hmac.compare_digest(password.encode(), endpoints.relay_secret().encode()):
            self.notebook_id = username
            return True
        return False

    def session_requested(self) -> processes.Process:
        return processes.Process(run_session)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int):
        return self._forward(dest_host, dest_port)

    async def _forward(self, dest_host: str, dest_port: int) -> SSHForwarder:
        try:
            sandbox = await in_thread(_open_sandbox, self.notebook_id, self.host)
        except sessions.NotInSandbox as exc:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from None
        with sandbox:
            try:
                target = sessions.forward_target(sandbox, dest_host)
            except sessions.NotInSandbox as exc:
                raise asyncssh.ChannelOpenError(
                    asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, str(exc)
                ) from None
            loop = asyncio.get_running_loop()
            sock = sessions.netns_socket(sandbox)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (target, dest_port)), 10)
        except (TimeoutError, OSError) as exc:
            sock.close()
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED,
                f"nothing answers on port {dest_port} in the notebook ({exc})",
            ) from None
        _, peer = await loop.create_connection(SSHForwarder, sock=sock)
        return SSHForwarder(peer)


async def run_session(process: asyncssh.SSHServerProcess) -> None:
    server: EndpointServer = process.get_extra_info("connection").get_owner()
    try:
        what = sessions.program(process.command, process.subsystem)
        sandbox = await in_thread(_open_sandbox, server.notebook_id, server.host)
    except sessions.NotInSandbox as exc:
        process.stderr.write(f"nbcloud: {exc.user_message}\r\n".encode())
        process.exit(255)
        return
    tty = bool(process.term_type) and process.subsystem is None
    extra = {"TERM": process.term_type} if tty else {}
    if sandbox.container:
        with sandbox:
            await _run_in_container(process, sandbox, what, extra, tty)
        return
    with sandbox:
        spec_fd = sessions.spec_file(sandbox, what, extra)
        try:
            await _run(process, sandbox, spec_fd, tty)
        finally:
            os.close(spec_fd)


class _PtyOutput(asyncio.Protocol):
    """A pty's output to the session. A pty ends with EIO once no process holds its
    other side: that is its end of file, after everything written was read."""

    def __init__(self, writer):
        self.writer = writer
        self.ended = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        with contextlib.suppress(asyncssh.Error, OSError):
            self.writer.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(None)


def _set_size(fd: int, size: tuple) -> None:
    width, height, pixwidth, pixheight = size
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, pixwidth, pixheight))


async def _pump(read, writer) -> None:
    """Copy a local output to the session's stdout or stderr until its end."""
    with contextlib.suppress(OSError, asyncssh.Error, ConnectionError):
        while data := await read(CHUNK):
            writer.write(data)
            await writer.drain()


async def _feed(process: asyncssh.SSHServerProcess, write, close, tty_fd: int | None, pid) -> None:
    """Copy the session's stdin to the local process; window changes go to its pty,
    signals to its process group."""
    while True:
        try:
            data = await process.stdin.read(CHUNK)
        except asyncssh.TerminalSizeChanged as change:
            if tty_fd is not None:
                with contextlib.suppress(OSError):
                    _set_size(tty_fd, change.term_size)
            continue
        except asyncssh.SignalReceived as received:
            with contextlib.suppress(TypeError, AttributeError, OSError):
                os.killpg(pid(), getattr(signal, f"SIG{received.signal}"))
            continue
        except asyncssh.BreakReceived:
            continue
        except (asyncssh.Error, ConnectionError, OSError):
            break
        if not data:
            break
        with contextlib.suppress(OSError, ConnectionError):
            await write(data)
    with contextlib.suppress(OSError, ConnectionError):
        close()


async def _run(process, sandbox: sessions.Sandbox, spec_fd: int, tty: bool) -> None:
    loop = asyncio.get_running_loop()
    argv = sessions.session_argv(sandbox, spec_fd, tty)
    fds = sessions.launch_fds(sandbox, spec_fd)
    common = dict(env=network.LAUNCH_ENV, cwd="/", pass_fds=fds)
    if tty:
        master, slave = os.openpty()
        _set_size(master, process.term_size)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=slave, stdout=slave, stderr=slave, **common
            )
        finally:
            os.close(slave)
        out_file = os.fdopen(master, "rb", buffering=0)
        _, output = await loop.connect_read_pipe(lambda: _PtyOutput(process.stdout), out_file)
        in_fd = os.dup(master)

        async def write(data: bytes) -> None:
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(in_fd, view) :]
                except BlockingIOError:
                    await asyncio.sleep(0.01)

        os.set_blocking(in_fd, False)
        outputs = [output.ended]
        feeder = asyncio.ensure_future(
            _feed(
                process,
                write,
                lambda: None,
                in_fd,
                lambda: proc.pid if proc.returncode is None else None,
            )
        )
    else:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            **common,
        )

        async def write(data: bytes) -> None:
            proc.stdin.write(data)
            await proc.stdin.drain()

        outputs = [_pump(proc.stdout.read, process.stdout), _pump(proc.stderr.read, process.stderr)]
        feeder = asyncio.ensure_future(
            _feed(
                process,
                write,
                proc.stdin.close,
                None,
                lambda: proc.pid if proc.returncode is None else None,
            )
        )
        in_fd = None
    # The gateway closing the channel (the user left) ends the session's processes.
    hangup = asyncio.ensure_future(_hang_up_when_closed(process, proc))
    try:
        if tty:
            status = await proc.wait()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*outputs), PTY_DRAIN_AFTER_EXIT)
        else:
            await asyncio.gather(*outputs)
            status = await proc.wait()
    finally:
        feeder.cancel()
        hangup.cancel()
        if in_fd is not None:
            os.close(in_fd)
            out_file.close()
    with contextlib.suppress(asyncssh.Error, OSError):
        if status < 0:
            process.exit_with_signal(signal.Signals(-status).name.removeprefix("SIG"))
        else:
            process.exit(status)


async def _run_in_container(
    process, sandbox: sessions.Sandbox, what: sessions.Program, extra: dict, tty: bool
) -> None:
    """A session in a container: the Engine's exec, its socket joined to the channel."""
    api = docker_runtime.client().api
    exec_id, raw = await asyncio.to_thread(sessions.container_exec, sandbox, what, extra, tty)
    raw.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=raw)
    if tty:
        width, height = process.term_size[:2]
        with contextlib.suppress(Exception):
            await asyncio.to_thread(api.exec_resize, exec_id, height=height, width=width)

    async def write(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    def close_stdin() -> None:
        if writer.can_write_eof():
            writer.write_eof()

    async def resized(size) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(api.exec_resize, exec_id, height=size[1], width=size[0])

    feeder = asyncio.ensure_future(_feed_container(process, write, close_stdin, resized))
    try:
        if tty:
            await _pump(reader.read, process.stdout)
        else:
            await _demux(reader, process.stdout, process.stderr)
    finally:
        feeder.cancel()
        writer.close()
    status = (await asyncio.to_thread(api.exec_inspect, exec_id)).get("ExitCode")
    with contextlib.suppress(asyncssh.Error, OSError):
        process.exit(status if status is not None else 255)


async def _feed_container(process, write, close, resized) -> None:
    while True:
        try:
            data = await process.stdin.read(CHUNK)
        except asyncssh.TerminalSizeChanged as change:
            await resized(change.term_size)
            continue
        except (asyncssh.BreakReceived, asyncssh.SignalReceived):
            continue  # the Engine's exec takes no signals
        except (asyncssh.Error, ConnectionError, OSError):
            break
        if not data:
            break
        with contextlib.suppress(OSError, ConnectionError):
            await write(data)
    with contextlib.suppress(OSError, ConnectionError):
        close()


async def _demux(reader: asyncio.StreamReader, stdout, stderr) -> None:
    """Docker's multiplexed stream: 8-byte headers (stream 1 or 2, then a size)."""
    with contextlib.suppress(asyncio.IncompleteReadError, OSError, asyncssh.Error):
        while True:
            header = await reader.readexactly(8)
            data = await reader.readexactly(int.from_bytes(header[4:8], "big"))
            target = stderr if header[0] == 2 else stdout
            target.write(data)
            await target.drain()


async def _hang_up_when_closed(process, proc) -> None:
    await process.channel.wait_closed()
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGHUP)


class HostSshEndpoint:
    """The endpoint, served by an event loop in a thread of the host's worker."""

    def __init__(self, host: str):
        self.host = host
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="ssh-endpoint", daemon=True
        )
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._public_key = ""

    def start(self) -> None:
        """Serve, and register; a host that cannot still runs notebooks (it says why)."""
        try:
            self._start()
        except Exception:
            log.exception(
                "host %s serves no SSH sessions: check NBCLOUD_SSH_HOST_ADDR and "
                "NBCLOUD_SSH_HOST_PORT",
                self.host,
            )

    def _start(self) -> None:
        key = keys.host_key(settings.DATA_DIR / "ssh" / f"host_key-{self.host}")
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._serve(key), self._loop)
        self._acceptor = future.result(30)
        self.port = self._acceptor.sockets[0].getsockname()[1]
        self._public_key = key.convert_to_public().export_public_key().decode().strip()
        self.register()
        log.info(
            "host %s serves SSH sessions on %s:%s",
            self.host,
            settings.NBCLOUD_SSH_HOST_ADDR,
            self.port,
        )

    def register(self) -> None:
        """Say where this host serves sessions (at start, and again at each heartbeat,
        so a host row made again finds its endpoint)."""
        if self._acceptor is not None:
            endpoints.register_endpoint(
                self.host, settings.NBCLOUD_SSH_HOST_ADDR, self.port, self._public_key
            )

    async def _serve(self, key) -> asyncssh.SSHAcceptor:
        return await asyncssh.create_server(
            lambda: EndpointServer(self.host),
            settings.NBCLOUD_SSH_HOST_ADDR,
            settings.NBCLOUD_SSH_HOST_PORT,
            server_host_keys=[key],
            encoding=None,
            line_editor=False,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_scp=False,
            public_key_auth=False,
            kbdint_auth=False,
            compression_algs=["none"],
            encryption_algs=keys.CIPHERS,
            window=keys.RELAY_WINDOW,
            max_pktsize=keys.RELAY_PACKET,
            reuse_address=True,
        )

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            endpoints.unregister_endpoint(self.host, self.port)
        if self._acceptor is not None:
            self._loop.call_soon_threadsafe(self._acceptor.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
