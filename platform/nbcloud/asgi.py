"""The platform's ASGI entry point: the gateway for /notebooks/<id>/..., Django for the rest."""

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


async def application(scope, receive, send):
    if scope["type"] in ("http", "websocket") and _for_gateway(scope):
        await gateway(scope, receive, send)
    elif scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 4404})
    else:
        await django_application(scope, receive, send)
