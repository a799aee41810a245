"""SSH access: who may open a session in which notebook, where its host serves it,
and the events that say who did, from where and for how long.

A login names a notebook (the SSH user name is its id) and offers a key. The key
opens it when it is one of the notebook's own `ssh_public_keys` (read at each
login, so a change takes effect at once), or a key on the account of a person
who may operate the notebook under the API's rules (`nbcloud.api.access`): a
`read` role never opens a shell, and an open (`unsecure_http`) notebook is no
more open to SSH than any other.
"""

import logging
from dataclasses import dataclass
from types import SimpleNamespace

import asyncssh
from django.conf import settings
from django.utils import timezone

from nbcloud.api.access import grant_role, project_role
from nbcloud.notebooks import services as notebook_services
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import InfoCode, State
from nbcloud.projects.models import WRITE_ROLES

from . import keys
from .endpoints import live_notebook
from .models import SshKey

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Login:
    notebook_id: str
    actor: str  # how events name who logged in
    fingerprint: str = ""  # of the key that opened it; "" through the API


def ssh_url(notebook: Notebook) -> str | None:
    """ssh://<notebook id>@<gateway> while the platform serves SSH."""
    if not settings.NBCLOUD_SSH_PORT or notebook.state == State.DELETED:
        return None
    return f"ssh://{notebook.pk}@{settings.NBCLOUD_SSH_PUBLIC_ADDRESS}"


def may_operate(user, notebook: Notebook) -> bool:
    """Whether this person may run code in the notebook: the API's rules, as for a
    request signed in as them (their project role, or a grant on this notebook)."""
    if not user.is_active:
        return False
    caller = SimpleNamespace(user=user, auth=None)
    return (
        project_role(caller, notebook.project) in WRITE_ROLES
        or grant_role(caller, notebook) in WRITE_ROLES
    )


def authenticate(notebook_id: str, offered: asyncssh.SSHKey) -> Login | None:
    """The login this key opens on the notebook, or None."""
    notebook = live_notebook(notebook_id)
    if notebook is None:
        return None
    fingerprint = keys.fingerprint(offered)
    for line in notebook.ssh_public_keys or []:
        try:
            key = keys.parse(line)
        except Exception:
            log.warning("notebook %s: an ssh_public_keys line is not a key", notebook.pk)
            continue
        if keys.same_key(key, offered):
            return Login(str(notebook.pk), f"ssh key {fingerprint}", fingerprint)
    for member_key in SshKey.objects.select_related("user").filter(fingerprint=fingerprint):
        if keys.same_key(keys.parse(member_key.public_key), offered) and may_operate(
            member_key.user, notebook
        ):
            SshKey.objects.filter(pk=member_key.pk).update(last_used_at=timezone.now())
            return Login(
                str(notebook.pk),
                f"{member_key.user.username} (ssh key {member_key.name})",
                fingerprint,
            )
    return None


def session_opened(login: Login, peer: str, what: str) -> None:
    notebook = live_notebook(login.notebook_id)
    if notebook is not None:
        notebook_services.record_event(
            notebook,
            InfoCode.SSH_SESSION,
            f"{what} opened from {peer}"
            + (f" (key {login.fingerprint})" if login.fingerprint else ""),
            actor=login.actor,
        )


def session_closed(login: Login, peer: str, what: str, seconds: float, outcome: str) -> None:
    notebook = live_notebook(login.notebook_id)
    if notebook is not None:
        notebook_services.record_event(
            notebook,
            InfoCode.SSH_SESSION,
            f"{what} from {peer} ended after {seconds:.0f} s ({outcome})",
            actor=login.actor,
        )
