"""Helpers for the console's tests: people with passwords and signed-in clients."""

from django.test import Client

from nbcloud.projects.models import Membership

PASSWORD = "a long enough password"


def person(django_user_model, username: str, project, role: str):
    user, _ = django_user_model.objects.get_or_create(username=username)
    user.set_password(PASSWORD)
    user.save()
    Membership.objects.update_or_create(project=project, user=user, defaults={"role": role})
    return user


def signed_in(user, *, csrf_checks: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf_checks)
    client.force_login(user)
    return client
