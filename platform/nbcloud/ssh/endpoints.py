"""Where each host serves the sessions the gateway relays, and how the two trust
each other. Host code uses this module (it registers its endpoint), so it
imports nothing of the API."""

from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.db import connections
from django.utils.crypto import salted_hmac

from nbcloud.hosts.models import Host
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import State

from .models import HostEndpoint


class SessionRefused(Exception):
    """A session cannot be opened; the message is for the person connecting."""


@dataclass(frozen=True)
class Endpoint:
    """Where the notebook's host serves relayed sessions, and the key it proves itself with."""

    address: str
    port: int
    host_key: str


def relay_secret() -> str:
    """What the gateway (and the exec API) give hosts' endpoints to be let in: derived
    from SECRET_KEY, which every process of one platform shares."""
    return salted_hmac("nbcloud.ssh.relay", "host endpoint", algorithm="sha256").hexdigest()


def live_notebook(notebook_id: str) -> Notebook | None:
    try:
        return (
            Notebook.objects.select_related("project")
            .exclude(state=State.DELETED)
            .filter(pk=notebook_id)
            .first()
        )
    except Exception:  # not a UUID: no such notebook
        return None


def endpoint_of(notebook_id: str) -> Endpoint:
    """Where the running notebook's sessions are served; SessionRefused when nowhere."""
    notebook = live_notebook(notebook_id)
    if notebook is None:
        raise SessionRefused("No such notebook.")
    if notebook.state != State.RUNNING or notebook.host_id is None:
        raise SessionRefused(
            f"The notebook is {notebook.state}, not RUNNING: start it first "
            f"(nbc notebook start {notebook.pk})."
        )
    endpoint = HostEndpoint.objects.filter(host_id=notebook.host_id).first()
    if endpoint is None:
        raise SessionRefused(
            "The notebook's host does not serve SSH sessions (its worker has not registered "
            "an SSH endpoint); ask the operator."
        )
    return Endpoint(endpoint.address, endpoint.port, endpoint.host_key)


def register_endpoint(host_name: str, address: str, port: int, host_key: str) -> None:
    """A host's worker says where it serves relayed sessions (at every start)."""
    host = Host.objects.get(name=host_name)
    HostEndpoint.objects.update_or_create(
        host=host, defaults={"address": address, "port": port, "host_key": host_key}
    )


def unregister_endpoint(host_name: str, port: int) -> None:
    HostEndpoint.objects.filter(host__name=host_name, port=port).delete()


async def in_thread(func, *args):
    """Run a database function off the event loop, on a connection of its own that is
    closed afterwards (the pool's threads come and go; logins are rare)."""

    def call():
        try:
            return func(*args)
        finally:
            connections.close_all()

    return await sync_to_async(call, thread_sensitive=False)()
