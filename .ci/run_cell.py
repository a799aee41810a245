"""Run one cell in a notebook through the platform's gateway, as a browser would:
Jupyter's REST API to start a kernel, its WebSocket to execute, with an API token.

    python run_cell.py NOTEBOOK_URL TOKEN CODE

Prints what the cell printed; exits 1 if it raised (printing the error). Uses
only the platform's own dependencies (aiohttp), so the platform's venv runs it.
The connection goes to the URL's port on 127.0.0.1 with the URL's Host header,
so per-notebook host names need no DNS.
"""

import asyncio
import json
import sys
import uuid
from urllib.parse import urlsplit

import aiohttp


async def run(url: str, token: str, code: str) -> int:
    parts = urlsplit(url)
    base = f"http://127.0.0.1:{parts.port or 80}{parts.path.rstrip('/')}"
    headers = {"Authorization": f"Bearer {token}", "Host": parts.netloc}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{base}/api/kernels", json={"name": "python3"}) as reply:
            if reply.status != 201:
                print(f"starting a kernel: {reply.status} {await reply.text()}", file=sys.stderr)
                return 2
            kernel = (await reply.json())["id"]
        try:
            return await _execute(http, base, kernel, code)
        finally:
            async with http.delete(f"{base}/api/kernels/{kernel}"):
                pass


async def _execute(http: aiohttp.ClientSession, base: str, kernel: str, code: str) -> int:
    ws_url = base.replace("http://", "ws://", 1) + f"/api/kernels/{kernel}/channels"
    msg_id = uuid.uuid4().hex
    request = {
        "header": {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "username": "ci",
            "session": uuid.uuid4().hex,
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {"code": code, "silent": False, "store_history": False},
        "channel": "shell",
        "buffers": [],
    }
    failed = False
    async with http.ws_connect(ws_url, heartbeat=30) as ws:
        await ws.send_str(json.dumps(request))
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            if data.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = data["header"]["msg_type"]
            content = data["content"]
            if kind == "stream":
                print(content["text"], end="")
            elif kind in ("execute_result", "display_data"):
                print(content["data"].get("text/plain", ""))
            elif kind == "error":
                failed = True
                print(f"{content['ename']}: {content['evalue']}", file=sys.stderr)
            elif kind == "status" and content["execution_state"] == "idle":
                break
    return 1 if failed else 0


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    return asyncio.run(asyncio.wait_for(run(*sys.argv[1:]), timeout=600))


if __name__ == "__main__":
    sys.exit(main())
