"""`exec` through the API: a command run in the notebook like an SSH command, its
output streamed back as JSON lines, the last of which holds its exit code.

The web process keeps its rule (it builds no runtime): like the gateway, it asks
the endpoint of the notebook's host over SSH, and waits for nothing else.
"""

import asyncio
import base64
import json
import shlex
import time
from collections.abc import AsyncIterator, Iterator

from asgiref.sync import sync_to_async

from . import relay, services
from .endpoints import SessionRefused

OUTPUT_CHUNK = 64 * 1024


async def astream(
    login: services.Login, peer: str, argv: list[str], timeout: float
) -> AsyncIterator[bytes]:
    """JSON lines: {"stream": "stdout"|"stderr", "data": base64} as output comes, then
    {"exit_code": n} (or {"exit_code": null, "error": "..."}). An async iterator, so
    that under ASGI each line reaches the client as the command writes it; the
    events are written on the request's own thread and connection."""
    started = time.monotonic()
    outcome = "error"
    await sync_to_async(services.session_opened)(login, peer, "exec")
    try:
        async for item in _items(login.notebook_id, argv, timeout):
            outcome = _outcome(item, outcome)
            yield _line(item)
    finally:
        await sync_to_async(services.session_closed)(
            login, peer, "exec", time.monotonic() - started, outcome
        )


def stream(login: services.Login, peer: str, argv: list[str], timeout: float) -> Iterator[bytes]:
    """astream() for synchronous callers (the console's terminal), on a loop of its own."""
    started = time.monotonic()
    outcome = "error"
    services.session_opened(login, peer, "exec")
    loop = asyncio.new_event_loop()
    items = _items(login.notebook_id, argv, timeout)
    try:
        while True:
            try:
                item = loop.run_until_complete(anext(items))
            except StopAsyncIteration:
                return
            outcome = _outcome(item, outcome)
            yield _line(item)
    finally:
        loop.run_until_complete(items.aclose())
        loop.close()
        services.session_closed(login, peer, "exec", time.monotonic() - started, outcome)


def _line(item: dict) -> bytes:
    return (json.dumps(item) + "\n").encode()


def _outcome(item: dict, before: str) -> str:
    return f"exit code {item['exit_code']}" if "exit_code" in item else before


async def _items(notebook_id: str, argv: list[str], timeout: float) -> AsyncIterator[dict]:
    queue: asyncio.Queue = asyncio.Queue()

    async def run() -> None:
        conn = await relay.connect(notebook_id)
        try:
            proc = await conn.create_process(shlex.join(argv), encoding=None, stdin=None)
            proc.stdin.write_eof()

            async def pump(reader, name: str) -> None:
                while data := await reader.read(OUTPUT_CHUNK):
                    await queue.put({"stream": name, "data": base64.b64encode(data).decode()})

            await asyncio.wait_for(
                asyncio.gather(pump(proc.stdout, "stdout"), pump(proc.stderr, "stderr")), timeout
            )
            await proc.wait_closed()
            await queue.put({"exit_code": proc.exit_status})
        finally:
            conn.close()

    async def produce() -> None:
        try:
            await run()
        except SessionRefused as exc:
            await queue.put({"exit_code": None, "error": str(exc)})
        except TimeoutError:
            await queue.put({"exit_code": None, "error": f"the command ran past {timeout:.0f} s"})
        except Exception as exc:  # the host went away mid-command
            await queue.put({"exit_code": None, "error": f"the session broke: {exc}"})

    task = asyncio.create_task(produce())
    try:
        while True:
            item = await queue.get()
            yield item
            if "exit_code" in item:
                return
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
