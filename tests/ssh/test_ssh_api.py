"""The API's side of SSH: where to connect (status.ssh_url, OVH's sshUrl) and a
person's own keys (/api/v1/ssh-keys/)."""

import pytest

from nbcloud.ssh.models import SshKey
from support.factories import make_notebook

pytestmark = pytest.mark.django_db

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJNVjSabKTpLWanp4m6rW2fi0h+FovsFxq7mLC1kYMMI me@laptop"


def test_status_says_where_to_ssh(alice_api, alpha, settings):
    settings.NBCLOUD_SSH_PORT = 2222
    settings.NBCLOUD_SSH_PUBLIC_ADDRESS = "nb.example.com:2222"
    notebook = make_notebook(alpha)
    status = alice_api.get(f"/api/v1/projects/alpha/notebooks/{notebook.pk}/").json()["status"]
    assert status["ssh_url"] == f"ssh://{notebook.pk}@nb.example.com:2222"

    settings.NBCLOUD_SSH_PORT = 0  # no gateway: nowhere to connect
    status = alice_api.get(f"/api/v1/projects/alpha/notebooks/{notebook.pk}/").json()["status"]
    assert status["ssh_url"] is None


def test_the_ovh_api_answers_the_ssh_url(alice_api, alpha, settings):
    settings.NBCLOUD_SSH_PUBLIC_ADDRESS = "nb.example.com:2222"
    notebook = make_notebook(alpha)
    reply = alice_api.get(f"/{settings.NBCLOUD_OVHAI_PREFIX}/v1/notebook/{notebook.pk}")
    assert reply.status_code == 200, reply.content
    assert reply.json()["status"]["sshUrl"] == f"ssh://{notebook.pk}@nb.example.com:2222"


def test_a_person_manages_their_own_keys_signed_in(client_of, alice, bob):
    alice_session = client_of(alice[0])
    added = alice_session.post("/api/v1/ssh-keys/", {"name": "laptop", "public_key": KEY})
    assert added.status_code == 201, added.content
    assert added.json()["fingerprint"].startswith("SHA256:")
    again = alice_session.post("/api/v1/ssh-keys/", {"name": "other", "public_key": KEY})
    assert again.status_code == 400 and "already" in again.content.decode()
    bad = alice_session.post("/api/v1/ssh-keys/", {"name": "bad", "public_key": "ssh-rsa nope"})
    assert bad.status_code == 400 and "public key" in bad.content.decode()

    # Bob sees none of Alice's keys, and cannot delete them.
    key_id = added.json()["id"]
    bob_session = client_of(bob[0])
    assert bob_session.get("/api/v1/ssh-keys/").json()["results"] == []
    assert bob_session.delete(f"/api/v1/ssh-keys/{key_id}/").status_code == 404
    assert alice_session.delete(f"/api/v1/ssh-keys/{key_id}/").status_code == 204
    assert not SshKey.objects.exists()


def test_an_api_token_may_not_add_keys(alice_api):
    refused = alice_api.post("/api/v1/ssh-keys/", {"name": "laptop", "public_key": KEY})
    assert refused.status_code == 403
    assert "signed in" in refused.content.decode()
    assert not SshKey.objects.exists()


@pytest.fixture
def client_of():
    from rest_framework.test import APIClient

    def make(user):
        client = APIClient()
        client.force_login(user)
        return client

    return make
