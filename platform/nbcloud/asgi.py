"""The platform's ASGI entry point: the gateway for /notebooks/<id>/..., Django for the rest."""

import asyncio
import json
import os

from django.core.asgi import get_asgi_application

from nbcloud.datadir import prepare

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nbcloud.settings")
# The web's start: the data directory before whitenoise looks in it.
prepare()
django_application = get_asgi_application()

from django.conf import settings  # noqa: E402

# Django's ASGI handler runs each request's database work in a thread of its own:
# a persistent connection outlives that thread and is never used again, so with
# CONN_MAX_AGE one connection per request stayed open until PostgreSQL refused more
# ("too many clients", every request then a 503). Under ASGI, Django's advice: no
# persistent connections, and the backend's pool on PostgreSQL (borrowed for a
# request, given back after; bounded; 1.6-1.8x the requests per second of a new
# connection each). The workers (one thread each, forked) keep persistent ones.
for _database in settings.DATABASES.values():
    _database["CONN_MAX_AGE"] = 0
    if _database["ENGINE"].endswith("postgresql") and settings.NBCLOUD_WEB_DB_POOL:
        _database.setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": settings.NBCLOUD_WEB_DB_POOL,
            "timeout": 10,  # then the request is a 503, as when the database is down
        }

from nbcloud.gateway import routing  # noqa: E402  (needs Django set up)
from nbcloud.gateway.proxy import gateway  # noqa: E402


def _for_gateway(scope) -> bool:
    """A notebook's path, or anything on a notebook's own origin."""
    if routing.notebook_id_of(scope["path"]):
        return True
    host = next((v for k, v in scope["headers"] if k == b"host"), b"").decode("latin-1")
    return routing.notebook_of_host(host) is not None


# At most NBCLOUD_WEB_MAX_REQUESTS requests in Django at once per process: each holds
# a thread and, on PostgreSQL, a connection while its view runs, so past that many
# an overloaded web would be refused by the database ("too many clients", 503s)
# instead of serving a little later. The rest wait their turn here, where waiting
# costs neither; a request that waits NBCLOUD_WEB_QUEUE_TIMEOUT seconds is a 503
# with Retry-After. A request gives its turn back once its answer starts (a long
# stream does not hold one).
_turns: asyncio.Semaphore | None = None


def _busy_answer() -> tuple[dict, dict]:
    body = json.dumps(
        {
            "detail": "The platform is busy: too many requests are waiting. Retry in a few "
            "seconds (operators: more web processes, or NBCLOUD_WEB_MAX_REQUESTS).",
            "code": "busy",
        }
    ).encode()
    start = {
        "type": "http.response.start",
        "status": 503,
        "headers": [
            (b"content-type", b"application/json"),
            (b"retry-after", b"5"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


async def _django_in_turn(scope, receive, send):
    global _turns
    if _turns is None:
        _turns = asyncio.Semaphore(settings.NBCLOUD_WEB_MAX_REQUESTS)
    turns = _turns
    try:
        await asyncio.wait_for(turns.acquire(), settings.NBCLOUD_WEB_QUEUE_TIMEOUT)
    except TimeoutError:
        for message in _busy_answer():
            await send(message)
        return
    held = True

    async def answer(message):
        nonlocal held
        if held and message["type"] == "http.response.start":
            held = False
            turns.release()
        await send(message)

    try:
        await django_application(scope, receive, answer)
    finally:
        if held:
            turns.release()


async def application(scope, receive, send):
    if scope["type"] in ("http", "websocket") and _for_gateway(scope):
        await gateway(scope, receive, send)
    elif scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 4404})
    elif scope["type"] == "http" and settings.NBCLOUD_WEB_MAX_REQUESTS:
        await _django_in_turn(scope, receive, send)
    else:
        await django_application(scope, receive, send)
