"""Who may SSH into a notebook: the real OpenSSH client against the platform's gateway,
into a real notebook on the process runtime."""

import os

import pytest

from nbcloud.notebooks.models import Notebook, NotebookEvent
from nbcloud.ssh.keys import fingerprint, parse
from nbcloud.ssh.models import SshKey
from support.factories import make_notebook

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(os.geteuid() != 0, reason="the process runtime's sandbox needs root"),
]


def _member_key(user, key, name="laptop") -> SshKey:
    return SshKey.objects.create(
        user=user, name=name, public_key=key.public, fingerprint=fingerprint(parse(key.public))
    )


def test_keys_open_the_notebook_they_belong_to_and_nothing_else(
    start_notebook, ssh, make_key, alice, bob, alpha, alice_api
):
    own, wrong, others, alices, bobs = (
        make_key(n) for n in ("own", "wrong", "others", "alice", "bob")
    )
    notebook_id = start_notebook(ssh_public_keys=[own.public])
    make_notebook(alpha, name="other", ssh_public_keys=[others.public])
    _member_key(alice[0], alices)
    _member_key(bob[0], bobs)  # bob is a `read` member of alpha

    before = Notebook.objects.get(pk=notebook_id).last_activity_at
    done = ssh(own, notebook_id, "echo hello from $(id -u); exit 7")
    after = Notebook.objects.get(pk=notebook_id).last_activity_at
    assert after is not None and (before is None or after > before)  # a session is use
    assert done.returncode == 7, done.stderr
    assert done.stdout.decode().startswith("hello from ")
    assert done.stdout.decode().split()[-1] != "0"

    assert ssh(alices, notebook_id, "true").returncode == 0  # an operator's own key
    for refused in (wrong, others, bobs):
        done = ssh(refused, notebook_id, "true")
        assert done.returncode == 255, refused.private.name
        assert b"Permission denied" in done.stderr

    # The notebook's keys are read at each login: a change takes effect at once.
    changed = alice_api.patch(
        f"/api/v1/projects/alpha/notebooks/{notebook_id}/",
        {"ssh_public_keys": [wrong.public]},
        format="json",
    )
    assert changed.status_code == 200, changed.content
    assert ssh(own, notebook_id, "true").returncode == 255
    assert ssh(wrong, notebook_id, "true").returncode == 0

    # Every session is an event: who, from where, for how long.
    messages = list(
        NotebookEvent.objects.filter(notebook_id=notebook_id, code="SSH_SESSION").values_list(
            "actor", "message"
        )
    )
    assert any(actor.startswith("alice (ssh key laptop)") for actor, _ in messages)
    assert any("opened from 127.0.0.1:" in message for _, message in messages)
    assert any("ended after" in message for _, message in messages)


def test_an_open_notebook_is_not_open_to_ssh_without_a_key(start_notebook, ssh, make_key):
    notebook_id = start_notebook(unsecure_http=True)
    done = ssh(make_key("anyone"), notebook_id, "true")
    assert done.returncode == 255
    assert b"Permission denied" in done.stderr


def test_a_stopped_or_unknown_notebook_says_so(ssh, make_key, alpha, alice):
    key = make_key("own")
    stopped = make_notebook(alpha, state="STOPPED", ssh_public_keys=[key.public])
    done = ssh(key, str(stopped.pk), "true")
    assert done.returncode == 255
    assert b"not RUNNING" in done.stderr
    assert ssh(key, "00000000-0000-0000-0000-000000000000", "true").returncode == 255
