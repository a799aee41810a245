"""``manage.py runsshgateway``: the platform's SSH gateway in the foreground."""

import asyncio
import signal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from nbcloud.ssh.gateway import serve


class Command(BaseCommand):
    help = "Serve SSH into notebooks (ssh <notebook id>@host -p NBCLOUD_SSH_PORT)."

    def add_arguments(self, parser):
        parser.add_argument("--address", default=None, help="default NBCLOUD_SSH_ADDR")
        parser.add_argument("--port", type=int, default=None, help="default NBCLOUD_SSH_PORT")

    def handle(self, *args, address: str | None, port: int | None, **options):
        address = address or settings.NBCLOUD_SSH_ADDR
        port = settings.NBCLOUD_SSH_PORT if port is None else port
        if not 0 < port < 65536:
            raise CommandError(
                f"SSH port {port} is not a TCP port (1-65535): set NBCLOUD_SSH_PORT or --port"
            )
        asyncio.run(self._serve(address, port))

    async def _serve(self, address: str, port: int) -> None:
        try:
            acceptor = await serve(address, port)
        except OSError as exc:
            raise CommandError(
                f"the SSH gateway cannot listen on {address}:{port} ({exc.strerror}): "
                "set NBCLOUD_SSH_PORT to a free port"
            ) from None
        self.stdout.write(f"SSH gateway listening on {address}:{port}")
        self.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        acceptor.close()
        await acceptor.wait_closed()
