"""The gateway: an ASGI app that proxies HTTP and WebSocket to editors.

Bodies stream both ways (uploads are read from the client as they arrive and
downloads are sent as they come); nothing is buffered whole. The platform's
credentials (its Authorization header and cookies) never reach the editor;
the editor's own secret is added instead. (JupyterLab writes that secret
into its pages; it only opens the editor its holder already reached through
the gateway, and it changes at every start.)
"""

import asyncio
import json
import logging
from urllib.parse import urlsplit

import aiohttp
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from nbcloud.monitoring import activity

from . import routing
from .authorize import TOKEN_COOKIE, Decision, authorize, parse_cookies

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
PLATFORM_COOKIES = frozenset(
    {TOKEN_COOKIE, settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME}
)
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
        if name not in PLATFORM_COOKIES
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


def _authorize(notebook_id: str, **kwargs) -> Decision:
    """authorize(), with the care Django's request cycle gives database connections.

    The gateway bypasses Django's handler, whose request_started and
    request_finished signals close broken and expired connections; without
    this, one dropped connection (a database restart) fails every later
    gateway request, and CONN_MAX_AGE is never honoured.
    """
    close_old_connections()
    try:
        return authorize(notebook_id, **kwargs)
    finally:
        close_old_connections()


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
    )
    return notebook_id, decision


def _target(decision: Decision, scope) -> str:
    query = scope.get("query_string", b"").decode("latin-1")
    return decision.upstream.rstrip("/") + scope["path"] + (f"?{query}" if query else "")


async def _refuse_http(send, decision: Decision) -> None:
    headers = [(b"content-type", b"application/json")]
    if decision.location:
        headers.append((b"location", decision.location.encode()))
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
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    (name, value)
                    for name, value in response.raw_headers
                    if name.decode("latin-1").lower() not in RESPONSE_DROPPED
                ],
            }
        )
        async for chunk in response.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        response.release()


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


async def gateway(scope, receive, send) -> None:
    if scope["type"] == "websocket":
        await proxy_websocket(scope, receive, send)
    else:
        await proxy_http(scope, receive, send)
