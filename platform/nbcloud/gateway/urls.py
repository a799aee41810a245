from django.urls import path

from . import views

urlpatterns = [
    path("login/", views.login, name="gateway-login"),
    path("logout/", views.logout, name="gateway-logout"),
    path("auth/", views.forward_auth, name="gateway-forward-auth"),
    path("handoff/", views.handoff, name="gateway-handoff"),
]
