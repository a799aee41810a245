"""`manage.py createapitoken USERNAME --project P [--role operator|read]`."""

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from nbcloud.projects.models import ApiToken, Membership, Project, hash_token

pytestmark = pytest.mark.django_db


def createapitoken(*args) -> str:
    out, err = StringIO(), StringIO()
    call_command("createapitoken", *args, stdout=out, stderr=err)
    assert err.getvalue() == ""
    return out.getvalue()


def test_prints_only_a_token_that_authenticates():
    output = createapitoken("dana", "--project", "delta")
    token = output.strip()
    assert output == token + "\n"
    assert token.startswith(ApiToken.PREFIX) and " " not in token
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    reply = client.get("/api/v1/projects/delta/notebooks/")
    assert reply.status_code == 200, reply.content
    assert client.get("/api/v1/projects/delta/quota/").json()["role"] == "operator"


def test_creates_user_project_and_membership():
    createapitoken("dana", "--project", "delta")
    user = get_user_model().objects.get(username="dana")
    project = Project.objects.get(name="delta")
    assert Membership.objects.get(user=user, project=project).role == "operator"
    token = ApiToken.objects.get(user=user)
    assert (token.project, token.role) == (project, "operator")


def test_reuses_an_existing_user_and_project(django_user_model, alpha):
    django_user_model.objects.create(username="erin")
    first = createapitoken("erin", "--project", "alpha").strip()
    second = createapitoken("erin", "--project", "alpha").strip()
    assert first != second
    assert django_user_model.objects.filter(username="erin").count() == 1
    assert Project.objects.filter(name="alpha").count() == 1
    assert Membership.objects.filter(user__username="erin", project=alpha).count() == 1
    assert ApiToken.objects.filter(user__username="erin", project=alpha).count() == 2


def test_read_role_gives_a_read_token():
    token = createapitoken("rita", "--project", "delta", "--role", "read").strip()
    assert ApiToken.objects.get(key_hash=hash_token(token)).role == "read"
    assert Membership.objects.get(user__username="rita").role == "read"
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.get("/api/v1/projects/delta/notebooks/").status_code == 200
    reply = client.post("/api/v1/projects/delta/notebooks/", {}, format="json")
    assert reply.status_code == 403 and reply.json()["code"] == "forbidden"


@pytest.mark.parametrize("name", ["Bad_Name", "-dash", "white space", "x" * 64])
def test_a_bad_project_name_is_a_command_error_and_creates_nothing(name):
    with pytest.raises(CommandError, match="project name"):
        createapitoken("dana", f"--project={name}")
    assert not Project.objects.exists()
    assert not get_user_model().objects.filter(username="dana").exists()
    assert not ApiToken.objects.exists()


def test_a_bad_role_is_refused():
    with pytest.raises(CommandError):
        createapitoken("dana", "--project", "delta", "--role", "admin")


def test_the_stored_hash_is_not_the_token():
    token = createapitoken("dana", "--project", "delta").strip()
    stored = ApiToken.objects.get()
    assert stored.key_hash != token
    assert token not in stored.key_hash
    assert stored.key_hash == hash_token(token)
    assert token.startswith(stored.key_prefix) and len(stored.key_prefix) < len(token)
    for field in ApiToken._meta.concrete_fields:
        assert getattr(stored, field.attname) != token, field.name
