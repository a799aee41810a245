from django.urls import path

from . import views

urlpatterns = [
    path("login/", views.login, name="gateway-login"),
    path("logout/", views.logout, name="gateway-logout"),
]
