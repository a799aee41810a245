"""The gateway: an ASGI app that proxies HTTP and WebSocket to editors.

Bodies stream both ways (uploads are read from the client as they arrive and
downloads are sent as they come); nothing is buffered whole. The platform's
credentials (its Authorization header and cookies) never reach the editor;
the editor's own secret is added instead. Nor may the editor set the
platform's cookies: its Set-Cookie for those names, or for any Domain (which
would reach other notebooks' origins), is dropped.

On a notebook's own origin (routing.py) the gateway answers every path: the
notebook's own, its hand-off (handoff.py), and 404 for anything else. (JupyterLab writes that secret
into its pages; it only opens the editor its holder already reached through
the gateway, and it changes at every start.)
"""

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

import aiohttp
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections

from nbcloud.monitoring import activity

from . import handoff, routing
from .authorize import (
    STATE_COOKIE,
    Decision,
    authorize,
    cookie_name,
    is_platform_cookie,
    parse_cookies,
)

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "authorization",
        "cookie",
        "origin",
        "referer",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)
# The gateway's own server answers with these.
RESPONSE_DROPPED = HOP_BY_HOP | {"date", "server"}
_session: aiohttp.ClientSession | None = None


def session() -> aiohttp.ClientSession:
    """One connection pool per process (aiohttp's C parser: downloads at editor speed)."""
    global _session
    if _session is None or _session.closed:
        _session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=300),
            connector=aiohttp.TCPConnector(limit=1000),
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
        )
    return _session


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _forwarded_headers(
    headers: dict[str, str], decision: Decision, upstream_netloc: str
) -> list[tuple[str, str]]:
    out = [(k, v) for k, v in headers.items() if k not in HOP_BY_HOP]
    out.append(("host", upstream_netloc))
    kept = "; ".join(
        f"{name}={value}"
        for name, value in parse_cookies(headers.get("cookie", "")).items()
        if not is_platform_cookie(name)
    )
    if decision.editor_id == "vscode":
        # The client's own code-server-session, if any, would be read first.
        cookies = [c for c in kept.split("; ") if c and not c.startswith("code-server-session=")]
        kept = "; ".join([*cookies, f"code-server-session={decision.code_server_session}"])
    elif decision.secret:
        out.append(("authorization", f"token {decision.secret}"))
    if kept:
        out.append(("cookie", kept))
    return out


class _Granted:
    """The gateway's recent admissions, to ride out a database outage.

    Every request is decided against the database; only while the database
    cannot be reached does a request identical to one admitted within
    NBCLOUD_GATEWAY_OUTAGE_GRACE seconds (same notebook, method, host, origin
    and credentials, kept as a hash) pass on that admission: running editors keep
    serving whoever was using them. Anything else gets a 503."""

    SIZE = 10_000

    def __init__(self):
        self._seen: OrderedDict[str, tuple[float, Decision]] = OrderedDict()

    @staticmethod
    def key(notebook_id: str, kwargs: dict) -> str:
        material = repr((notebook_id, sorted((k, repr(v)) for k, v in kwargs.items())))
        return hashlib.sha256(material.encode()).hexdigest()

    def remember(self, key: str, decision: Decision) -> None:
        self._seen[key] = (time.monotonic(), decision)
        self._seen.move_to_end(key)
        while len(self._seen) > self.SIZE:
            self._seen.popitem(last=False)

    def recall(self, key: str) -> Decision | None:
        seen = self._seen.get(key)
        if seen is None or time.monotonic() - seen[0] > settings.NBCLOUD_GATEWAY_OUTAGE_GRACE:
            return None
        return seen[1]


_granted = _Granted()


def _authorize(notebook_id: str, **kwargs) -> Decision:
    """authorize(), with the care Django's request cycle gives database connections.

    The gateway bypasses Django's handler, whose request_started and
    request_finished signals close broken and expired connections; without
    this, one dropped connection (a database restart) fails every later
    gateway request, and CONN_MAX_AGE is never honoured.
    """
    key = _Granted.key(notebook_id, kwargs)
    close_old_connections()
    try:
        decision = authorize(notebook_id, **kwargs)
    except (OperationalError, InterfaceError):
        log.warning("gateway: the database is unreachable; notebook %s", notebook_id)
        return _granted.recall(key) or Decision(
            503, "The platform's database cannot be reached just now; try again shortly."
        )
    finally:
        close_old_connections()
    if decision.status == 200:
        _granted.remember(key, decision)
    return decision


async def _decide(scope, headers: dict[str, str]) -> tuple[str, Decision]:
    notebook_id = routing.notebook_id_of(scope["path"])
    decision = await sync_to_async(_authorize)(
        notebook_id,
        method=scope.get("method", "GET"),
        host=headers.get("host", ""),
        authorization=headers.get("authorization", ""),
        cookies=parse_cookies(headers.get("cookie", "")),
        origin=headers.get("origin", "") or headers.get("referer", ""),
        websocket=scope["type"] == "websocket",
        wants_html="text/html" in headers.get("accept", ""),
        path=scope["path"],
        query=scope.get("query_string", b"").decode("latin-1"),
    )
    return notebook_id, decision


def _target(decision: Decision, scope) -> str:
    query = scope.get("query_string", b"").decode("latin-1")
    return decision.upstream.rstrip("/") + scope["path"] + (f"?{query}" if query else "")


# The editor credential the gateway adds to vscode requests (sha256 of the secret): the
# browser never holds it.
EDITOR_CREDENTIAL_COOKIES = frozenset({"code-server-session"})


def editor_cookie_allowed(set_cookie: str) -> bool:
    """Whether an editor's Set-Cookie may reach the browser: not a platform cookie's name
    nor the editor's credential, and no Domain (a cookie for the notebook's origin only)."""
    jar = SimpleCookie()
    try:
        jar.load(set_cookie)
    except Exception:
        return False
    if not jar:
        return False
    return not any(
        is_platform_cookie(name) or name.lower() in EDITOR_CREDENTIAL_COOKIES or morsel["domain"]
        for name, morsel in jar.items()
    )


def _response_headers(raw_headers) -> list[tuple[bytes, bytes]]:
    kept = []
    for name, value in raw_headers:
        lower = name.decode("latin-1").lower()
        if lower in RESPONSE_DROPPED:
            continue
        if lower == "set-cookie" and not editor_cookie_allowed(value.decode("latin-1")):
            log.warning("gateway: dropped an editor's Set-Cookie for a platform name or a Domain")
            continue
        kept.append((name, value))
    return kept


async def _refuse_http(send, decision: Decision) -> None:
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    if decision.location:
        headers.append((b"location", decision.location.encode()))
    for cookie in decision.set_cookies:
        headers.append((b"set-cookie", cookie.encode("latin-1")))
    if decision.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    code = {
        401: "not_authenticated",
        403: "forbidden",
        404: "not_found",
        503: "not_running",
        302: "login",
    }
    body = json.dumps(
        {"code": code.get(decision.status, "error"), "message": decision.message}
    ).encode()
    await send({"type": "http.response.start", "status": decision.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def proxy_http(scope, receive, send) -> None:
    headers = _headers(scope)
    notebook_id, decision = await _decide(scope, headers)
    if not decision.allowed:
        await _refuse_http(send, decision)
        return
    await activity.traffic(notebook_id)

    async def request_body():
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            if message.get("body"):
                yield message["body"]
            if not message.get("more_body"):
                return

    method = scope["method"]
    has_body = method not in ("GET", "HEAD") or "content-length" in headers
    try:
        response = await session().request(
            method,
            _target(decision, scope),
            headers=_forwarded_headers(headers, decision, urlsplit(decision.upstream).netloc),
            data=request_body() if has_body else None,
            allow_redirects=False,
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("gateway: editor at %s unreachable: %s", decision.upstream, exc)
        await _refuse_http(send, Decision(502, "The editor did not answer."))
        return
    try:
        if _carries_secret(response, decision):
            await _send_without_secret(send, response, decision.secret)
            return
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": _response_headers(response.raw_headers),
            }
        )
        async for chunk in response.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        response.release()


# JupyterLab writes its token (the editor's secret) into its pages' configuration;
# the gateway authenticates every request itself, so pages need not carry it.
PAGE_LIMIT = 16 * 2**20


def _carries_secret(response, decision: Decision) -> bool:
    return (
        bool(decision.secret)
        and response.headers.get("Content-Type", "").startswith("text/html")
        and "Content-Encoding" not in response.headers
        and int(response.headers.get("Content-Length") or 0) <= PAGE_LIMIT
    )


async def _send_without_secret(send, response, secret: str) -> None:
    body = await response.content.read(PAGE_LIMIT + 1)
    if len(body) > PAGE_LIMIT:  # not a page: refuse rather than pass the secret on
        await _refuse_http(send, Decision(502, "The editor answered an oversized page."))
        return
    body = body.replace(secret.encode(), b"")
    headers = [
        (name, value)
        for name, value in _response_headers(response.raw_headers)
        if name.lower() != b"content-length"
    ]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def proxy_websocket(scope, receive, send) -> None:
    headers = _headers(scope)
    notebook_id, decision = await _decide(scope, headers)
    if not decision.allowed:
        await receive()  # websocket.connect
        await send(
            {
                "type": "websocket.close",
                "code": 4000 + decision.status,
                "reason": decision.message[:120],
            }
        )
        return
    url = _target(decision, scope).replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    subprotocols = [
        p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()
    ]
    try:
        upstream = await session().ws_connect(
            url,
            headers=[
                h
                for h in _forwarded_headers(headers, decision, urlsplit(url).netloc)
                if h[0] != "host"
            ],
            protocols=subprotocols,
            max_msg_size=0,
            autoping=True,
            compress=0,
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("gateway: editor websocket at %s refused: %s", url, exc)
        await receive()
        await send({"type": "websocket.close", "code": 1011})
        return
    message = await receive()
    if message["type"] != "websocket.connect":
        await upstream.close()
        return
    await send({"type": "websocket.accept", "subprotocol": upstream.protocol})

    async def client_to_editor():
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await activity.traffic(notebook_id)
            if message.get("text") is not None:
                await upstream.send_str(message["text"])
            elif message.get("bytes") is not None:
                await upstream.send_bytes(message["bytes"])

    async def editor_to_client():
        async for data in upstream:
            if data.type == aiohttp.WSMsgType.TEXT:
                await send({"type": "websocket.send", "text": data.data})
            elif data.type == aiohttp.WSMsgType.BINARY:
                await send({"type": "websocket.send", "bytes": data.data})
            else:
                break
        await send({"type": "websocket.close", "code": upstream.close_code or 1000})

    tasks = [asyncio.ensure_future(client_to_editor()), asyncio.ensure_future(editor_to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await upstream.close()


def _claim(notebook_id: str, code: str, state: str) -> tuple[str, str] | str:
    close_old_connections()
    try:
        return handoff.claim(notebook_id, code, state)
    except handoff.HandoffRefused as refused:
        return str(refused)
    finally:
        close_old_connections()


async def exchange_handoff(scope, send, notebook_id: str, headers: dict[str, str]) -> None:
    """The notebook origin's side of the hand-off: a one-time code for this origin's cookie."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    state = parse_cookies(headers.get("cookie", "")).get(cookie_name(STATE_COOKIE), "")
    claimed = await sync_to_async(_claim)(notebook_id, query.get("code", [""])[0], state)
    if isinstance(claimed, str):
        await _refuse_http(send, Decision(403, claimed, set_cookies=(handoff.forget_state(),)))
        return
    value, next_path = claimed
    response = Decision(
        302,
        "Signed in.",
        location=next_path,
        set_cookies=(handoff.notebook_cookie(value), handoff.forget_state()),
    )
    await _refuse_http(send, response)


async def _not_here(scope, receive, send, notebook_id: str) -> None:
    message = f"Only notebook {notebook_id} is served on this origin."
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.close", "code": 4404, "reason": message})
    else:
        await _refuse_http(send, Decision(404, message))


async def gateway(scope, receive, send) -> None:
    headers = _headers(scope)
    own = routing.notebook_of_host(headers.get("host", ""))
    if own is not None and routing.notebook_id_of(scope["path"]) is None:
        # The notebook's origin serves the notebook, its hand-off, and nothing else.
        if scope["type"] == "http" and scope["path"] == routing.HANDOFF_PATH:
            await exchange_handoff(scope, send, own, headers)
        elif scope["type"] == "http" and scope["path"] == routing.LOGOUT_PATH:
            # Signing out here ends this origin's cookie, then the platform's.
            platform_logout = routing.platform_url("/gateway/logout/")
            cookies = (handoff.forget_notebook_cookie(),)
            await _refuse_http(
                send, Decision(302, "", location=platform_logout, set_cookies=cookies)
            )
        elif scope["type"] == "http" and scope["path"] == "/":
            await _refuse_http(send, Decision(302, "", location=routing.base_path(own)))
        else:
            await _not_here(scope, receive, send, own)
        return
    if scope["type"] == "websocket":
        await proxy_websocket(scope, receive, send)
    else:
        await proxy_http(scope, receive, send)
