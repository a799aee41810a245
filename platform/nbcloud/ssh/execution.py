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
from collections.abc import Iterator

from . import relay, services
from .endpoints import SessionRefused

OUTPUT_CHUNK = 64 * 1024


def stream(login: services.Login, peer: str, argv: list[str], timeout: float) -> Iterator[bytes]:
    """JSON lines: {"stream": "stdout"|"stderr", "data": base64} as output comes, then
    {"exit_code": n} (or {"exit_code": null, "error": "..."})."""
    loop = asyncio.new_event_loop()
    queue: asyncio.Queue = asyncio.Queue()
    started = time.monotonic()
    outcome = "error"
    services.session_opened(login, peer, "exec")

    async def run() -> None:
        conn = await relay.connect(login.notebook_id)
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

    task = loop.create_task(produce())
    try:
        while True:
            item = loop.run_until_complete(queue.get())
            yield (json.dumps(item) + "\n").encode()
            if "exit_code" in item:
                outcome = f"exit code {item['exit_code']}"
                break
    finally:
        task.cancel()
        loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
        loop.close()
        services.session_closed(login, peer, "exec", time.monotonic() - started, outcome)
