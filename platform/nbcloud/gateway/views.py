"""The token login page: a browser trades an API token for a gateway cookie."""

from django import forms
from django.conf import settings
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from rest_framework.exceptions import AuthenticationFailed

from nbcloud.api.authentication import token_for_value

from .authorize import TOKEN_COOKIE, sign_token_cookie


class TokenLoginForm(forms.Form):
    token = forms.CharField(widget=forms.PasswordInput, label="API token")


def login(request):
    next_url = request.GET.get("next") or request.POST.get("next") or "/"
    if not url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()}):
        next_url = "/"
    form = TokenLoginForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            token = token_for_value(form.cleaned_data["token"].strip())
        except AuthenticationFailed as exc:
            form.add_error("token", str(exc.detail))
        else:
            response = redirect(next_url)
            response.set_cookie(
                TOKEN_COOKIE,
                sign_token_cookie(token),
                max_age=settings.SESSION_COOKIE_AGE,
                httponly=True,
                samesite="Lax",
                secure=settings.NBCLOUD_PUBLIC_URL.startswith("https://"),
                domain=f".{settings.NBCLOUD_NOTEBOOK_DOMAIN}"
                if settings.NBCLOUD_NOTEBOOK_DOMAIN
                else None,
            )
            return response
    status = 401 if request.method == "POST" else 200
    return render(request, "gateway/login.html", {"form": form, "next": next_url}, status=status)


def logout(request):
    response = redirect("/gateway/login/")
    response.delete_cookie(TOKEN_COOKIE)
    return response
