"""Who a key opens a notebook for: the API's roles, decided without a network."""

import asyncssh
import pytest
from asgiref.sync import async_to_sync

from nbcloud.notebooks.models import NotebookGrant
from nbcloud.ssh import services
from nbcloud.ssh.keys import fingerprint
from nbcloud.ssh.models import SshKey
from support.factories import make_notebook

pytestmark = pytest.mark.django_db


def _key():
    return asyncssh.generate_private_key("ssh-ed25519").convert_to_public()


def _on_account(user, key, name="laptop") -> None:
    line = key.export_public_key().decode().strip()
    SshKey.objects.create(user=user, name=name, public_key=line, fingerprint=fingerprint(key))


def test_operators_members_grants_and_admins_get_in_and_nobody_else(
    alpha, alice, bob, charlie, django_user_model
):
    notebook = make_notebook(alpha)
    dave = django_user_model.objects.create(username="dave")
    erin = django_user_model.objects.create(username="erin")
    root = django_user_model.objects.create(username="root", is_superuser=True)
    keys = {name: _key() for name in ("alice", "bob", "charlie", "dave", "erin", "root")}
    for user in (alice[0], bob[0], charlie[0], dave, erin, root):
        _on_account(user, keys[user.username])
    NotebookGrant.objects.create(notebook=notebook, user=dave, role="operator")
    NotebookGrant.objects.create(notebook=notebook, user=erin, role="read")

    def opens(name: str) -> bool:
        return services.authenticate(str(notebook.pk), keys[name]) is not None

    assert opens("alice")  # operator of the project
    assert opens("dave")  # operator of this notebook by a grant
    assert opens("root")  # an administrator
    assert not opens("bob")  # read member
    assert not opens("erin")  # read grant
    assert not opens("charlie")  # another project's operator

    alice[0].is_active = False
    alice[0].save()
    assert not opens("alice")  # a disabled account opens nothing


def test_the_notebooks_own_keys_name_the_key_in_events(alpha):
    key = _key()
    notebook = make_notebook(alpha, ssh_public_keys=["not a key", key.export_public_key().decode()])
    login = services.authenticate(str(notebook.pk), key)
    assert login is not None and login.actor == f"ssh key {fingerprint(key)}"
    assert services.authenticate(str(notebook.pk), _key()) is None
    assert services.authenticate("not-a-uuid", key) is None


def test_exec_is_for_operators_and_says_why_it_cannot_run(alice_api, bob_api, alpha):
    notebook = make_notebook(alpha, state="STOPPED")
    url = f"/api/v1/projects/alpha/notebooks/{notebook.pk}/exec/"
    assert bob_api.post(url, {"command": ["id"]}, format="json").status_code == 403
    assert alice_api.post(url, {"command": []}, format="json").status_code == 400
    reply = alice_api.post(url, {"command": ["id"]}, format="json")
    assert reply.status_code == 200
    assert reply["Content-Type"] == "application/x-ndjson"
    # Served as ASGI serves it: an async iterator.
    body = async_to_sync(_read)(reply.streaming_content)
    last = body.decode().strip().splitlines()[-1]
    assert '"exit_code": null' in last and "error" in last


async def _read(content) -> bytes:
    return b"".join([part async for part in content])
