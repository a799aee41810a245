"""The official `ovhai` SDK pointed at nbcloud: in-process for the fast tests
(through Django's test client, inside the test's transaction), or over HTTP at
the real platform for the end-to-end ones."""

import json

import httpx
from django.test import Client
from ovhai.errors import UnexpectedStatus
from ovhai.models.error import Error

from ovhai import AuthenticatedClient

PREFIX = "/ovhai"


class DjangoTransport(httpx.BaseTransport):
    """httpx requests answered by Django's test client: no server, the test's database."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host",)}
        reply = Client().generic(
            request.method,
            request.url.raw_path.decode(),
            data=request.read(),
            content_type=request.headers.get("content-type", ""),
            headers=headers,
        )
        return httpx.Response(reply.status_code, headers=dict(reply.items()), content=reply.content)


def sdk_client(token: str, base_url: str = f"http://testserver{PREFIX}") -> AuthenticatedClient:
    """The SDK's client with an nbcloud app token; raises on a status it does not document."""
    args = {} if not base_url.startswith("http://testserver") else {"transport": DjangoTransport()}
    return AuthenticatedClient(
        base_url=base_url, token=token, raise_on_unexpected_status=True, httpx_args=args
    )


def refused(call, status: int) -> Error:
    """`call()` (an SDK `sync_detailed`) is refused with `status`, in OVH's error shape.

    With raise_on_unexpected_status the SDK raises on statuses OVH's spec does
    not list for the call; either way the body is checked.
    """
    try:
        response = call()
    except UnexpectedStatus as exc:
        code, content = exc.status_code, exc.content
    else:
        code, content = response.status_code, response.content
    assert code == status, content
    body = json.loads(content)
    error = Error.from_dict(body)
    assert isinstance(error.message, str) and error.message, body
    return error
