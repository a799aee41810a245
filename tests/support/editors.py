"""Editors as a user reaches them: a notebook's URL on the embedded default, and a
JupyterLab kernel driven over the Jupyter Server REST + websocket API."""

import json
import os
import time
import uuid
from urllib.parse import urlsplit

import requests
import websocket


def notebook_url(platform_server: str, notebook_id) -> str:
    """A notebook's `status.url` on the embedded default: its own origin, <id>.localhost."""
    port = urlsplit(platform_server).port
    return f"http://{notebook_id}.localhost:{port}/notebooks/{notebook_id}/"


class Kernel:
    """A JupyterLab kernel driven over the Jupyter Server REST + websocket API."""

    def __init__(self, base_url: str, headers: dict[str, str]):
        self.base_url = base_url
        self.headers = headers
        reply = requests.post(f"{base_url}api/kernels", headers=headers, json={}, timeout=30)
        reply.raise_for_status()
        self.id = reply.json()["id"]
        ws_url = "ws" + base_url.removeprefix("http") + f"api/kernels/{self.id}/channels"
        # Over https, the CA requests trusts (REQUESTS_CA_BUNDLE: the stack's own CA).
        ca = os.environ.get("REQUESTS_CA_BUNDLE")
        sslopt = {"ca_certs": ca} if ca and ws_url.startswith("wss://") else None
        self.ws = websocket.create_connection(ws_url, header=headers, timeout=60, sslopt=sslopt)

    def submit(self, code: str) -> str:
        """Send code to run without waiting; returns the request's message id."""
        msg_id = uuid.uuid4().hex
        self.ws.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "msg_type": "execute_request",
                        "username": "test",
                        "session": uuid.uuid4().hex,
                        "version": "5.3",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "channel": "shell",
                    "buffers": [],
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": False,
                        "user_expressions": {},
                        "allow_stdin": False,
                    },
                }
            )
        )
        return msg_id

    def execute(self, code: str, timeout: float = 120) -> str:
        """Run code; return its stdout, or raise with the traceback."""
        msg_id = self.submit(code)
        out, error, deadline = [], None, time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                out.append(content["data"].get("text/plain", "") + "\n")
            elif kind == "error":
                error = "\n".join(content["traceback"])
            elif kind == "status" and content["execution_state"] == "idle":
                break
        if error:
            raise AssertionError(f"kernel error:\n{error}")
        return "".join(out)

    def close(self) -> None:
        self.ws.close()
        requests.delete(f"{self.base_url}api/kernels/{self.id}", headers=self.headers, timeout=30)
