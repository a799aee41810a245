"""A TCP relay from a node's own address to an editor in its network namespace.

An editor answers on its namespace's address, which only the machine that runs
it can reach. On a cluster's compute node (the slurm runtime), the gateway is
elsewhere: the job's launcher relays one port of the node's cluster address to
the editor, and publishes that port. Each connection is a pair of streams
copied both ways until either side closes; the relay runs in a thread of the
launcher and ends with it. What reaches the editor is what reached it before:
connections from the machine's side of its veth pair, which the editor still
answers only behind its secret.
"""

import asyncio
import threading

CHUNK = 64 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        if not writer.is_closing():
            writer.close()


class Relay:
    """Listens on `listen_host` (port chosen by the kernel: `port`) and relays every
    connection to `target_host`:`target_port`."""

    def __init__(self, listen_host: str, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, listen_host, 0)
        )
        self.port: int = self.server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    def close(self) -> None:
        async def shut() -> None:
            self.server.close()
            await self.server.wait_closed()

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(shut(), self.loop).result(5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
