"""Compare desired and actual state and repair drift.

- queued notebooks: try placing them again;
- running notebooks: ask each host to check its editors (a dead one is saved
  and marked FAILED);
- a notebook stuck in a transitional state longer than NBCLOUD_STUCK_AFTER:
  its task was probably lost between commit and dispatch, so send it again
  (tasks are idempotent).
"""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from nbcloud.hosts.services import place_queued
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import State


def run() -> None:
    from .tasks import check_notebooks, delete_notebook, start_notebook, stop_notebook

    place_queued()
    hosts = (
        Notebook.objects.filter(state=State.RUNNING, host__isnull=False)
        .values_list("host__name", flat=True)
        .distinct()
    )
    for host in hosts:
        check_notebooks.delay(host=host)
    resend = {
        State.STARTING: start_notebook,
        State.STOPPING: stop_notebook,
        State.DELETING: delete_notebook,
    }
    stuck_before = timezone.now() - timedelta(seconds=settings.NBCLOUD_STUCK_AFTER)
    stuck = Notebook.objects.filter(
        state__in=resend, host__isnull=False, state_changed_at__lt=stuck_before
    ).values_list("pk", "state", "host__name")
    for pk, state, host in stuck:
        resend[state].delay(str(pk), host=host)
