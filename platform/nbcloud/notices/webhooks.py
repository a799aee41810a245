"""Webhooks: where a project's owner may send notices, how they are signed, and the
one HTTP call that sends them.

A webhook URL is owner input, and the platform calls it from inside its own network.
So only http(s) URLs, and by default only public destinations: every address the
host name resolves to must be global (not loopback, private, link-local, shared,
reserved or multicast), unless it lies in NBCLOUD_WEBHOOK_ALLOWED_NETWORKS. The
check runs when the target is saved and again at each delivery, and the request
goes to an address that was checked (no second resolution a DNS answer
could change), without following redirects.

Each request carries `X-Nbcloud-Timestamp` (Unix seconds) and
`X-Nbcloud-Signature: sha256=<hex>`, the HMAC-SHA256 of `<timestamp>.<body>`
under the target's secret (docs/notices.md says how to verify it).
"""

import hashlib
import hmac
import http.client
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

SIGNATURE_HEADER = "X-Nbcloud-Signature"
TIMESTAMP_HEADER = "X-Nbcloud-Timestamp"
EVENT_HEADER = "X-Nbcloud-Event"
DELIVERY_HEADER = "X-Nbcloud-Delivery"
USER_AGENT = "nbcloud-webhooks/1"
# What is read of an answer: its status matters, and a little of the body for the log.
ANSWER_READ = 4096


class Refused(ValueError):
    """A destination the platform will not call; the message says why and what to do."""


class Unreachable(OSError):
    """The destination could not be reached or did not answer (worth trying again)."""


@dataclass(frozen=True)
class Destination:
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line
    addresses: tuple[str, ...]  # the checked addresses the request may go to, in order


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Nbcloud-Signature value of `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def parse_url(url: str):
    """The URL's parts, or Refused saying what is wrong with it."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise Refused(f"{url!r} is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise Refused(
            f"{url!r}: webhooks are sent over http or https only; use an http:// or https:// URL"
        )
    if not parts.hostname:
        raise Refused(f"{url!r} names no host: use a URL like https://hooks.example.com/nbcloud")
    if parts.username is not None or parts.password is not None:
        raise Refused(
            f"{url!r} holds a user name or password: put a token in the path or query instead, "
            "and check the X-Nbcloud-Signature header"
        )
    return parts, port or (443 if parts.scheme == "https" else 80)


def allowed(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in network for network in settings.NBCLOUD_WEBHOOK_ALLOWED_NETWORKS):
        return True
    return ip.is_global and not ip.is_multicast


def destination(url: str) -> Destination:
    """Where a request to `url` may go: Refused for a URL or an address the platform
    will not call, Unreachable when the host name does not resolve."""
    parts, port = parse_url(url)
    try:
        found = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Unreachable(f"{parts.hostname!r} does not resolve ({exc})") from None
    addresses = list(dict.fromkeys(info[4][0] for info in found))
    refused = [a for a in addresses if not allowed(a)]
    if refused:
        raise Refused(
            f"{url!r} leads to {', '.join(refused)}, a loopback, private, link-local or reserved "
            "address: webhooks go to public addresses only (an operator may allow networks "
            "with NBCLOUD_WEBHOOK_ALLOWED_NETWORKS)"
        )
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    return Destination(parts.scheme, parts.hostname, port, path, tuple(addresses))


def check(url: str) -> None:
    """Refused when the platform would not call `url` (a host name that does not resolve
    is refused too: it is checked when the target is saved)."""
    try:
        destination(url)
    except Unreachable as exc:
        raise Refused(f"{url!r}: {exc}; check the host name") from None


def _connect(destination: Destination, timeout: float) -> socket.socket:
    """A connection to the first of the checked addresses that answers (in the resolver's
    order, as a browser would try them), never to an address that was not checked."""
    error: OSError | None = None
    for address in destination.addresses:
        try:
            return socket.create_connection((address, destination.port), timeout)
        except OSError as exc:
            error = exc
    raise error or OSError(f"{destination.host} has no address")


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to a checked address, whatever the host name resolves to now."""

    def __init__(self, destination: Destination, timeout: float):
        super().__init__(destination.host, destination.port, timeout=timeout)
        self._destination = destination

    def connect(self):
        self.sock = _connect(self._destination, self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a checked address, with the certificate checked for the host name."""

    def __init__(self, destination: Destination, timeout: float):
        super().__init__(
            destination.host,
            destination.port,
            timeout=timeout,
            context=ssl.create_default_context(),
        )
        self._destination = destination

    def connect(self):
        sock = _connect(self._destination, self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, str]:
    """POST `body` to `url` once: (status, the answer's first bytes). Refused or
    Unreachable when it could not be sent."""
    target = destination(url)
    kind = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
    connection = kind(target, timeout)
    try:
        connection.request(
            "POST",
            target.path,
            body=body,
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers},
        )
        answer = connection.getresponse()
        return answer.status, answer.read(ANSWER_READ).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        raise Unreachable(f"{target.host}:{target.port}: {exc or type(exc).__name__}") from None
    finally:
        connection.close()
