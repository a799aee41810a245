"""One error shape for every error response of the API.

    {"code": "quota_exceeded", "message": "human sentence", "fields": {...}}

`fields` appears on validation errors and maps a dotted field path to its
messages; `message` repeats them in one sentence so a client can print it as is.
"""

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "invalid_state"
    default_detail = "The resource is not in a state that allows this action."


class QuotaExceeded(exceptions.APIException):
    status_code = status.HTTP_403_FORBIDDEN
    default_code = "quota_exceeded"
    default_detail = "The project's quota does not allow this."


def _flatten(detail, prefix: str = "") -> dict[str, list[str]]:
    if isinstance(detail, dict):
        out: dict[str, list[str]] = {}
        for key, value in detail.items():
            path = prefix if key == "non_field_errors" else (f"{prefix}.{key}" if prefix else key)
            out.update(_flatten(value, path))
        return out
    if isinstance(detail, list):
        if all(not isinstance(d, dict | list) for d in detail):
            return {prefix or "request": [str(d) for d in detail]}
        out = {}
        for index, value in enumerate(detail):
            out.update(_flatten(value, f"{prefix}[{index}]"))
        return out
    return {prefix or "request": [str(detail)]}


# DRF's own codes that the API names differently.
_RENAMED_CODES = {"permission_denied": "forbidden"}


def _code(exc: exceptions.APIException) -> str:
    codes = exc.get_codes()
    if isinstance(codes, str):
        return _RENAMED_CODES.get(codes, codes)
    return {
        400: "invalid",
        401: "not_authenticated",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        409: "invalid_state",
    }.get(exc.status_code, "error")


def exception_handler(exc, context):
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        message = "; ".join(
            f"{path}: {' '.join(msgs)}" if path != "request" else " ".join(msgs)
            for path, msgs in fields.items()
        )
        body = {"code": "invalid", "message": message, "fields": fields}
    else:
        body = {"code": _code(exc), "message": str(exc.detail)}
    return Response(body, status=response.status_code, headers=_headers(response))


def _headers(response: Response) -> dict[str, str]:
    return {k: v for k, v in response.items() if k in ("WWW-Authenticate", "Retry-After", "Allow")}
