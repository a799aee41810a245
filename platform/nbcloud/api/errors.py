"""One error shape for every error response of the API.

    {"code": "quota_exceeded", "message": "human sentence", "fields": {...}}

`fields` appears on validation errors and maps a dotted field path to its
messages; `message` repeats them in one sentence so a client can print it as is.

The platform's own errors (`nbcloud.errors`) become answers here and nowhere
else: each class has its status code, each error its code and message.
"""

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response

from nbcloud import errors

# The status code of each domain error (the nearest class in its MRO decides).
STATUS_CODES: dict[type[errors.DomainError], int] = {
    errors.DomainError: status.HTTP_400_BAD_REQUEST,
    errors.Invalid: status.HTTP_400_BAD_REQUEST,
    errors.NotAuthenticated: status.HTTP_401_UNAUTHORIZED,
    errors.QuotaExceeded: status.HTTP_403_FORBIDDEN,
    errors.BudgetExceeded: status.HTTP_403_FORBIDDEN,
    errors.NotFound: status.HTTP_404_NOT_FOUND,
    errors.InvalidState: status.HTTP_409_CONFLICT,
    errors.Unavailable: status.HTTP_502_BAD_GATEWAY,
}


def status_code(error: errors.DomainError) -> int:
    return next(STATUS_CODES[c] for c in type(error).__mro__ if c in STATUS_CODES)


def api_exception(error: errors.DomainError) -> exceptions.APIException:
    """The DRF exception that answers `error`: its status code, code and message."""
    if isinstance(error, errors.Invalid):
        return exceptions.ValidationError(
            {error.field: [error.message]} if error.field else [error.message]
        )
    if isinstance(error, errors.NotAuthenticated):
        # DRF's own class: the answer carries WWW-Authenticate.
        return exceptions.AuthenticationFailed(error.message, code=error.code)
    found = exceptions.APIException(error.message, code=error.code)
    found.status_code = status_code(error)
    return found


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
    if isinstance(exc, errors.DomainError):
        exc = api_exception(exc)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    # Imported here: DRF's views module loads the authentication classes as it
    # is imported, and they map their errors with `api_exception` above.
    from rest_framework.views import exception_handler as drf_exception_handler

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
