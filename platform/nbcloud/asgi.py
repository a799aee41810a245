"""The platform's ASGI entry point: the gateway for /notebooks/<id>/..., Django for the rest."""

import os

from django.core.asgi import get_asgi_application

from nbcloud.datadir import prepare

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nbcloud.settings")
# The web's start: the data directory before whitenoise looks in it.
prepare()
django_application = get_asgi_application()

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
