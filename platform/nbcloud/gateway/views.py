"""The token login page, and the same authorization decision for a front proxy.

`login`: a browser trades an API token for the gateway's cookie (of the
platform's origin).
`handoff`: the platform's side of the one-time hand-off to a notebook's own
origin (handoff.py).
`forward_auth`: for nginx `auth_request` or Caddy `forward_auth` in front of
the editors in production: it asks `authorize` (the one decision) about the
original request and answers 200 with where the editor is and the header that
opens it, or the refusal's status. That header holds the editor's secret, so
the endpoint answers only the platform's own proxy: it must send
`X-Nbcloud-Proxy-Token: <NBCLOUD_GATEWAY_PROXY_TOKEN>` (and overwrite any such
header a client sent). Without that setting the endpoint is off.
"""

import hmac
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme

from nbcloud.errors import NotAuthenticated
from nbcloud.projects.models import ApiToken

from . import routing
from .authorize import TOKEN_COOKIE, authorize, parse_cookies, secure, sign_token_cookie


class TokenLoginForm(forms.Form):
    token = forms.CharField(widget=forms.PasswordInput, label="API token")


def login(request):
    next_url = request.GET.get("next") or request.POST.get("next") or "/"
    if not url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()}):
        next_url = "/"
    form = TokenLoginForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            token = ApiToken.for_value(form.cleaned_data["token"].strip())
        except NotAuthenticated as exc:
            form.add_error("token", str(exc))
        else:
            response = redirect(next_url)
            response.set_cookie(
                TOKEN_COOKIE,
                sign_token_cookie(token),
                max_age=settings.SESSION_COOKIE_AGE,
                httponly=True,
                samesite="Lax",
                secure=secure(),
            )
            return response
    status = 401 if request.method == "POST" else 200
    return render(request, "gateway/login.html", {"form": form, "next": next_url}, status=status)


def _refusal(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"code": code, "message": message}, status=status)


def handoff(request):
    """Hand a browser signed in here to a notebook's own origin with a one-time code."""
    from nbcloud.notebooks.models import Notebook
    from nbcloud.notebooks.states import State

    from . import handoff as flow
    from .authorize import Caller, _caller_sees, identify

    notebook_id = request.GET.get("notebook", "").lower()
    state = request.GET.get("state", "")
    if not routing.per_notebook_origins():
        return _refusal(
            404, "not_found", "Notebooks share the platform's origin here: no hand-off needed."
        )
    if not routing.UUID_RE.fullmatch(notebook_id) or not state:
        return _refusal(
            400,
            "invalid",
            "A hand-off needs ?notebook=<id>&state=...: open the notebook's URL to start one.",
        )
    caller = identify("", request.COOKIES)
    if not isinstance(caller, Caller) or (caller.token is None and caller.user is None):
        login = f"/gateway/login/?{urlencode({'next': request.get_full_path()})}"
        return redirect(login)
    notebook = Notebook.objects.exclude(state=State.DELETED).filter(pk=notebook_id).first()
    if notebook is None or not _caller_sees(caller, notebook):
        return _refusal(404, "not_found", "No such notebook.")
    code = flow.issue(caller, notebook, state, request.GET.get("next", ""))
    response = redirect(flow.exchange_url(notebook_id, code))
    response["Cache-Control"] = "no-store"
    response["Referrer-Policy"] = "no-referrer"
    return response


def logout(request):
    response = redirect("/gateway/login/")
    response.delete_cookie(TOKEN_COOKIE)
    return response


PROXY_TOKEN_HEADER = "X-Nbcloud-Proxy-Token"


def _from_platform_proxy(request) -> JsonResponse | None:
    """None when the request comes from the platform's front proxy; else the refusal."""
    expected = settings.NBCLOUD_GATEWAY_PROXY_TOKEN
    if not expected:
        return JsonResponse(
            {
                "code": "forbidden",
                "message": "Forward auth is off: set NBCLOUD_GATEWAY_PROXY_TOKEN on the platform "
                f"and have the front proxy send it in {PROXY_TOKEN_HEADER}.",
            },
            status=403,
        )
    given = request.headers.get(PROXY_TOKEN_HEADER, "")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return JsonResponse(
            {
                "code": "forbidden",
                "message": f"Forward auth answers only the platform's front proxy: "
                f"{PROXY_TOKEN_HEADER} must equal NBCLOUD_GATEWAY_PROXY_TOKEN.",
            },
            status=403,
        )
    return None


def forward_auth(request):
    refused = _from_platform_proxy(request)
    if refused is not None:
        return refused
    uri = request.headers.get("X-Original-URI") or request.headers.get("X-Forwarded-Uri") or ""
    notebook_id = routing.notebook_id_of(uri.split("?", 1)[0])
    if notebook_id is None:
        return JsonResponse({"code": "not_found", "message": "Not a notebook URL."}, status=404)
    method = (
        request.headers.get("X-Original-Method")
        or request.headers.get("X-Forwarded-Method")
        or "GET"
    )
    decision = authorize(
        notebook_id,
        method=method.upper(),
        host=request.headers.get("X-Forwarded-Host") or request.get_host(),
        authorization=request.headers.get("Authorization", ""),
        cookies=parse_cookies(request.headers.get("Cookie", "")),
        origin=request.headers.get("Origin", "") or request.headers.get("Referer", ""),
        websocket=request.headers.get("Upgrade", "").lower() == "websocket",
        wants_html="text/html" in request.headers.get("Accept", ""),
        path=uri,
    )
    if not decision.allowed:
        response = JsonResponse({"message": decision.message}, status=decision.status)
        if decision.location:
            response["Location"] = decision.location
        for cookie in decision.set_cookies:  # the hand-off's state, for the proxy to pass on
            response.headers.setdefault("Set-Cookie", cookie)
        return response
    response = HttpResponse(status=200)
    response["X-Nbcloud-Upstream"] = decision.upstream
    if decision.editor_id == "vscode":
        response["X-Nbcloud-Editor-Cookie"] = f"code-server-session={decision.code_server_session}"
    else:
        response["X-Nbcloud-Editor-Authorization"] = f"token {decision.secret}"
    return response
