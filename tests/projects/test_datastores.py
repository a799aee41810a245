"""Datastores: credentials sealed at rest, write-only in the API, per project."""

import pytest
from django.db import connection

from nbcloud.projects.models import Datastore

pytestmark = pytest.mark.django_db
BASE = "/api/v1/projects/alpha/datastores/"
S3 = {
    "alias": "ovh-gra",
    "type": "s3",
    "endpoint": "https://s3.gra.io.cloud.ovh.net",
    "region": "gra",
    "access_key": "AKIA-TEST",
    "secret_key": "very-secret-key-123",
}
GIT = {
    "alias": "gitlab",
    "type": "git",
    "host": "gitlab.example.org",
    "username": "bot",
    "password": "git-password-456",
}


def test_secrets_are_sealed_and_never_returned(alice_api):
    for body, secret in ((S3, "very-secret-key-123"), (GIT, "git-password-456")):
        created = alice_api.post(BASE, body, format="json")
        assert created.status_code == 201, created.content
        assert secret not in created.content.decode()
        listed = (
            alice_api.get(BASE).content.decode()
            + alice_api.get(f"{BASE}{body['alias']}/").content.decode()
        )
        assert secret not in listed
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT sealed_secrets FROM projects_datastore WHERE alias = %s", [body["alias"]]
            )
            (sealed,) = cursor.fetchone()
        assert secret not in sealed  # a database dump alone does not reveal it
    assert Datastore.objects.get(alias="ovh-gra").secrets() == {"secret_key": "very-secret-key-123"}
    assert Datastore.objects.get(alias="gitlab").secrets() == {"password": "git-password-456"}


def test_bad_datastores_are_refused_with_the_field_named(alice_api):
    cases = [
        ({**S3, "secret_key": ""}, "secret_key"),
        ({**S3, "type": "ftp"}, "type"),
        ({**GIT, "password": ""}, "password"),
        ({**GIT, "host": ""}, "host"),
        ({**S3, "host": "x"}, "host"),
        ({**S3, "alias": "Bad Alias"}, "alias"),
    ]
    for body, field in cases:
        reply = alice_api.post(BASE, body, format="json")
        assert reply.status_code == 400, (body, reply.content)
        assert field in reply.json()["fields"], reply.json()
    assert alice_api.post(BASE, S3, format="json").status_code == 201
    duplicate = alice_api.post(BASE, S3, format="json")
    assert duplicate.status_code == 400 and "already has" in duplicate.json()["message"]
    assert Datastore.objects.count() == 1


def test_roles_and_tenancy(alice_api, bob_api, charlie_api):
    assert bob_api.post(BASE, S3, format="json").status_code == 403
    alice_api.post(BASE, S3, format="json")
    assert bob_api.get(BASE).status_code == 200
    assert charlie_api.get(BASE).status_code == 404
    assert charlie_api.delete(f"{BASE}ovh-gra/").status_code == 404
    assert bob_api.delete(f"{BASE}ovh-gra/").status_code == 403
    assert alice_api.delete(f"{BASE}ovh-gra/").status_code == 204
    assert not Datastore.objects.exists()


def test_volumes_name_unknown_aliases_and_wrong_kinds(alice_api):
    spec = {
        "name": "v",
        "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
        "resources": {"cpu": 1},
        "volumes": ["data@nowhere/in:/workspace/data:RO"],
    }
    unknown = alice_api.post("/api/v1/projects/alpha/notebooks/", spec, format="json")
    assert unknown.status_code == 400 and "'nowhere'" in unknown.json()["message"]
    alice_api.post(BASE, {"alias": "nowhere", "type": "git", "host": "git.example"}, format="json")
    wrong_kind = alice_api.post("/api/v1/projects/alpha/notebooks/", spec, format="json")
    assert wrong_kind.status_code == 400
    assert "is a git datastore" in wrong_kind.json()["message"]
    alice_api.post(BASE, {**S3, "alias": "store"}, format="json")
    outside = {**spec, "volumes": ["data@store/in:/data:RO"]}
    refused = alice_api.post("/api/v1/projects/alpha/notebooks/", outside, format="json")
    assert refused.status_code == 400 and "below /workspace" in refused.json()["message"]
    ok = {**spec, "volumes": ["data@store/in:/workspace/data:RO"]}
    created = alice_api.post("/api/v1/projects/alpha/notebooks/", ok, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["spec"]["volumes"][0]["alias"] == "store"


def test_a_changed_key_is_a_clear_error(settings, alice_api):
    from cryptography.fernet import Fernet
    from django.core.exceptions import ImproperlyConfigured

    from nbcloud.projects import secrets

    alice_api.post(BASE, S3, format="json")
    secrets._fernet.cache_clear()
    settings.NBCLOUD_SECRETS_KEY = Fernet.generate_key().decode()
    try:
        with pytest.raises(ImproperlyConfigured, match="cannot be decrypted"):
            Datastore.objects.get().secrets()
    finally:
        secrets._fernet.cache_clear()
