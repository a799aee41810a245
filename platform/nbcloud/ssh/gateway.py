"""The platform's SSH gateway: one endpoint for every notebook.

`ssh <notebook id>@<gateway>`: the user name names the notebook, the key says
who is asking (services.authenticate). Each accepted connection is a session,
written as two notebook events (opened: who, from where, with which key;
ended: after how long). Its channels are relayed, one for one, to the
endpoint of the notebook's host, which runs them inside the notebook's
sandbox: shells with a pty (and window changes), commands (with their exit
status), the sftp subsystem (sftp, scp), and direct TCP/IP channels (local port
forwarding) to the notebook's own network. Agent and X11 forwarding and remote
forwarding (a listener on the gateway) are refused.
"""

import asyncio
import logging
import time

import asyncssh
from django.conf import settings

from nbcloud.monitoring import activity

from . import keys, processes, relay, services
from .endpoints import SessionRefused, in_thread

log = logging.getLogger(__name__)


class GatewayServer(asyncssh.SSHServer):
    def __init__(self):
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = "?"
        self.login: services.Login | None = None
        self._offered: services.Login | None = None
        self._started = 0.0
        self._host: asyncssh.SSHClientConnection | None = None
        self._host_lock = asyncio.Lock()
        self._outcome = "closed"

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        address = conn.get_extra_info("peername") or ("?", 0)
        self.peer = f"{address[0]}:{address[1]}"

    def connection_lost(self, exc: Exception | None) -> None:
        if self._host is not None:
            self._host.close()
        if self.login is not None:
            seconds = time.monotonic() - self._started
            outcome = f"error: {exc}" if exc else self._outcome
            asyncio.ensure_future(
                in_thread(
                    services.session_closed, self.login, self.peer, "SSH session", seconds, outcome
                )
            )

    def begin_auth(self, username: str) -> bool:
        return True  # always a key: no notebook, open or not, lets anyone in without one

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # asyncssh checks the signature right after the call that accepts the key,
        # and completes the login with it: the last key accepted is the one used.
        self._offered = await in_thread(services.authenticate, username, key)
        return self._offered is not None

    def auth_completed(self) -> None:
        self.login = self._offered
        self._started = time.monotonic()
        asyncio.ensure_future(
            in_thread(services.session_opened, self.login, self.peer, "SSH session")
        )

    def session_requested(self) -> processes.Process:
        return processes.Process(relay_process)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        log.info("ssh %s: remote forwarding to %s:%s refused", self.peer, listen_host, listen_port)
        return False

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int):
        async def tunnel():
            await activity.traffic(self.login.notebook_id)
            host = await self.host_connection()
            return await self.conn.forward_tunneled_connection(host, dest_host, dest_port)

        return tunnel()

    async def host_connection(self) -> asyncssh.SSHClientConnection:
        """This session's connection to the notebook's host (one, opened on first use)."""
        async with self._host_lock:
            if self._host is None:
                self._host = await relay.connect(self.login.notebook_id)
            return self._host


async def relay_process(process: asyncssh.SSHServerProcess) -> None:
    """A shell, a command or a subsystem: the same on the host, streams joined."""
    server: GatewayServer = process.get_extra_info("connection").get_owner()
    try:
        host = await server.host_connection()
        remote = await host.create_process(
            process.command,
            subsystem=process.subsystem,
            term_type=process.term_type,
            term_size=process.term_size,
            term_modes=process.term_modes,
            encoding=None,
            window=keys.RELAY_WINDOW,
            max_pktsize=keys.RELAY_PACKET,
        )
    except (SessionRefused, asyncssh.Error, OSError) as exc:
        process.stderr.write(f"nbcloud: {exc}\r\n".encode())
        process.exit(255)
        return
    await process.redirect(stdin=remote.stdin, stdout=remote.stdout, stderr=remote.stderr)
    client_gone = asyncio.ensure_future(process.channel.wait_closed())
    host_done = asyncio.ensure_future(remote.wait_closed())
    in_use = asyncio.ensure_future(_in_use(server.login.notebook_id))
    await asyncio.wait({client_gone, host_done}, return_when=asyncio.FIRST_COMPLETED)
    in_use.cancel()
    if not host_done.done():
        remote.close()  # the client left: the host ends the command
        client_gone.cancel()
        return
    client_gone.cancel()
    if remote.exit_signal:
        process.exit_with_signal(*remote.exit_signal)
    else:
        process.exit(remote.exit_status if remote.exit_status is not None else 255)


async def _in_use(notebook_id: str) -> None:
    """A shell, a command or a transfer in progress counts as use (the idle rules)."""
    while True:
        await activity.traffic(notebook_id)
        await asyncio.sleep(settings.NBCLOUD_ACTIVITY_WRITE_INTERVAL)


async def serve(address: str, port: int) -> asyncssh.SSHAcceptor:
    """Start the gateway (returns once it listens)."""
    return await asyncssh.create_server(
        GatewayServer,
        address,
        port,
        server_host_keys=[keys.host_key(settings.DATA_DIR / "ssh" / "gateway_host_key")],
        encoding=None,
        line_editor=False,
        agent_forwarding=False,
        x11_forwarding=False,
        allow_scp=False,
        password_auth=False,
        kbdint_auth=False,
        keepalive_interval=30,
        encryption_algs=keys.CIPHERS,
        window=keys.RELAY_WINDOW,
        reuse_address=True,
    )
