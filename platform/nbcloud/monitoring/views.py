"""`GET /metrics`: the platform's Prometheus exposition.

Answers a bearer token equal to NBCLOUD_METRICS_TOKEN, or a client address in
NBCLOUD_METRICS_ALLOWED_NETWORKS (loopback by default). The client address is
the connection's, never a forwarded header a client could write.
"""

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .collectors import registry


def _refusal(status: int, message: str) -> JsonResponse:
    response = JsonResponse(
        {"code": "forbidden" if status == 403 else "not_authenticated", "message": message},
        status=status,
    )
    if status == 401:
        response["WWW-Authenticate"] = "Bearer"
    return response


def _client_allowed(request: HttpRequest) -> bool:
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in network for network in settings.NBCLOUD_METRICS_ALLOWED_NETWORKS)


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    authorization = request.headers.get("Authorization", "")
    token = settings.NBCLOUD_METRICS_TOKEN
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if (
            not token
            or scheme.lower() != "bearer"
            or not hmac.compare_digest(value.strip().encode(), token.encode())
        ):
            return _refusal(401, "Wrong metrics token (NBCLOUD_METRICS_TOKEN).")
    elif not _client_allowed(request):
        return _refusal(
            403,
            "Metrics answer to a bearer NBCLOUD_METRICS_TOKEN or to clients in "
            "NBCLOUD_METRICS_ALLOWED_NETWORKS.",
        )
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)
