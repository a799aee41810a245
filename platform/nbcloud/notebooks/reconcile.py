"""Compare desired and actual state and repair drift.

- hosts silent for longer than NBCLOUD_HOST_LOST_AFTER: marked LOST, their
  notebooks start again on another host of the region (or wait QUEUED);
- queued notebooks: try placing them again;
- a notebook stuck in a transitional state (STARTING, STOPPING, RESTARTING,
  DELETING) longer than NBCLOUD_STUCK_AFTER: its task was probably lost between
  commit and dispatch, so send it again (tasks are idempotent).

Running editors are not checked here: each host's worker asks itself to check
its editors at every heartbeat (`workers.host_agent`), so a round's cost grows
with what changed (hosts gone silent, notebooks waiting or stuck), not with the
number of hosts; a host whose worker is gone cannot check anything, and is
found by its silence.
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from nbcloud import dispatch
from nbcloud.hosts import services as host_services

from .models import Notebook
from .states import State

# The task that drives each transitional state, sent again when it is stuck.
RESEND = {
    State.STARTING: dispatch.start,
    State.STOPPING: dispatch.stop,
    State.RESTARTING: dispatch.restart,
    State.DELETING: dispatch.delete,
}


def run(now: datetime | None = None) -> None:
    now = now or timezone.now()
    host_services.mark_lost(now - timedelta(seconds=settings.NBCLOUD_HOST_LOST_AFTER))
    host_services.place_queued()
    resend_stuck(now)


def resume_host(host: str) -> list[str]:
    """A host's worker (re)started: drive its notebooks in flight again at once, whatever
    their age (tasks are idempotent), and check its running editors. Returns the ids sent."""
    moving = Notebook.objects.filter(host__name=host, state__in=RESEND).values_list("pk", "state")
    sent = []
    for pk, state in moving:
        RESEND[state](str(pk), host)
        sent.append(str(pk))
    dispatch.check_notebooks(host)
    return sent


def resend_stuck(now: datetime) -> None:
    stuck_before = now - timedelta(seconds=settings.NBCLOUD_STUCK_AFTER)
    stuck = Notebook.objects.filter(
        state__in=RESEND, host__isnull=False, state_changed_at__lt=stuck_before
    ).values_list("pk", "state", "host__name")
    for pk, state, host in stuck:
        RESEND[state](str(pk), host)
