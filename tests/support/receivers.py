"""Real receivers of notices on loopback: an SMTP server (aiosmtpd) that keeps the mail
it is given, and an HTTP server that keeps the webhooks it is sent and answers each
with the next status of a script (then 200)."""

import email
import email.policy
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller


class _Keep:
    def __init__(self):
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email.policy.default)
        )
        return "250 OK"


class SmtpServer:
    """aiosmtpd on 127.0.0.1:`port`; `messages` holds what it received."""

    def __init__(self, port: int):
        self._keep = _Keep()
        self._controller = Controller(self._keep, hostname="127.0.0.1", port=port)
        self.port = port

    @property
    def messages(self) -> list:
        return list(self._keep.messages)

    def start(self) -> "SmtpServer":
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """An HTTP server on loopback; `answers` are the statuses of the next requests."""

    answers: list[int] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def start(self) -> "WebhookReceiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append(Request(self.path, dict(self.headers.items()), body))
                status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"try again later")

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
