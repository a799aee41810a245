"""Client traffic through the gateway, as a sign that a notebook is in use.

Written at most every NBCLOUD_ACTIVITY_WRITE_INTERVAL seconds per notebook
and process: the gateway's hot path costs a dictionary look-up, not a write.
"""

import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import State

_written: dict[str, float] = {}


def _write(notebook_id: str) -> None:
    close_old_connections()
    try:
        Notebook.objects.filter(pk=notebook_id, state=State.RUNNING).update(
            last_activity_at=timezone.now()
        )
    finally:
        close_old_connections()


async def traffic(notebook_id: str) -> None:
    now = time.monotonic()
    if now - _written.get(notebook_id, -1e9) < settings.NBCLOUD_ACTIVITY_WRITE_INTERVAL:
        return
    _written[notebook_id] = now
    await sync_to_async(_write)(notebook_id)
