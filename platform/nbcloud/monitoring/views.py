"""`GET /metrics`: the platform's Prometheus exposition, for a scrape token only (scrape.py)."""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import scrape
from .collectors import registry


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    refused = scrape.refusal(request.headers.get("Authorization", ""))
    if refused is not None:
        status, message = refused
        response = JsonResponse({"code": scrape.code_of(status), "message": message}, status=status)
        if status == 401:
            response["WWW-Authenticate"] = "Bearer"
        return response
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)
