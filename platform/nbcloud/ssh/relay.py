"""The control side's road to a notebook's host: an SSH connection to the host's
endpoint (workers/ssh_endpoint.py), which runs sessions inside the notebook's sandbox.

Like the HTTP gateway's connections to editors, this is data, not work: tasks
still go through `nbcloud.dispatch`. The endpoint proves itself with the host
key its worker registered; the gateway proves itself with the relay secret,
and names the notebook as the user.
"""

import asyncssh

from . import keys
from .endpoints import SessionRefused, endpoint_of, in_thread, relay_secret

CONNECT_TIMEOUT = 10


async def connect(notebook_id: str) -> asyncssh.SSHClientConnection:
    """An SSH connection to the endpoint of the notebook's host, for this notebook.
    SessionRefused (with a message for the user) when the notebook cannot be reached."""
    endpoint = await in_thread(endpoint_of, notebook_id)
    try:
        return await asyncssh.connect(
            endpoint.address,
            endpoint.port,
            username=notebook_id,
            password=relay_secret(),
            known_hosts=([asyncssh.import_public_key(endpoint.host_key)], [], []),
            client_keys=None,
            agent_path=None,
            preferred_auth="password",
            connect_timeout=CONNECT_TIMEOUT,
            # The gateway's own hop is on the platform's network: no compression.
            compression_algs=["none"],
            encryption_algs=keys.CIPHERS,
        )
    except (OSError, asyncssh.Error) as exc:
        raise SessionRefused(
            f"The notebook's host cannot be reached right now ({exc}); try again, or ask "
            "the operator."
        ) from None
