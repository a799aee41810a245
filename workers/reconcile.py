"""Compare desired and actual state and repair drift.

- hosts silent for longer than NBCLOUD_HOST_LOST_AFTER: marked LOST, their
  notebooks start again on another host of the region (or wait QUEUED);
- queued notebooks: try placing them again;
- running notebooks: ask each host to check its editors (a dead
  one is saved and marked FAILED);
- a notebook stuck in a transitional state longer than NBCLOUD_STUCK_AFTER:
  its task was probably lost between commit and dispatch, so send it again
  (tasks are idempotent).
"""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from nbcloud.hosts import services as host_services
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import State


def run() -> None:
    from .tasks import check_notebooks, delete_notebook, start_notebook, stop_notebook

    now = timezone.now()
    host_services.mark_lost(now - timedelta(seconds=settings.NBCLOUD_HOST_LOST_AFTER))
    host_services.place_queued()
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
    stuck_before = now - timedelta(seconds=settings.NBCLOUD_STUCK_AFTER)
    stuck = Notebook.objects.filter(
        state__in=resend, host__isnull=False, state_changed_at__lt=stuck_before
    ).values_list("pk", "state", "host__name")
    for pk, state, host in stuck:
        resend[state].delay(str(pk), host=host)
