"""Two placement passes at once, while users stop notebooks and stops complete.

Each actor is a thread with its own database connection, as the passes of
two control workers and the API's requests are: two threads run
`place_queued()` over and over, one stops notebooks (a queued one stops at
once; one placed first is refused while STARTING, then, once RUNNING, goes
STOPPING and its stop completes, freeing its GPU for the next in line), and one watches every committed state. No
notebook is placed twice, no GPU is held by two notebooks at any moment
seen, and the books agree with the rows.
"""

import threading

import pytest
from django.db import connection

from nbcloud.billing.models import BillableInterval
from nbcloud.errors import InvalidState
from nbcloud.hosts.services import place_queued
from nbcloud.notebooks import services
from nbcloud.notebooks.models import Notebook, NotebookEvent
from nbcloud.notebooks.states import State
from support.factories import make_host, make_queued_notebook
from support.services import purge_queues

pytestmark = pytest.mark.django_db(transaction=True)
HOSTS, GPUS_PER_HOST, NOTEBOOKS = 3, 2, 16


def held_gpus() -> list[str]:
    """Every GPU held by a notebook, as one committed snapshot shows them."""
    rows = Notebook.objects.exclude(host=None).values_list("gpu_uuids", flat=True)
    return [gpu for gpus in rows for gpu in gpus]


def test_two_passes_and_racing_stops_never_place_twice_nor_share_a_gpu(alpha, broker_url):
    hosts = [
        make_host(f"race-{h}", gpus=GPUS_PER_HOST, cpus=26, memory_gib=80, disk_gib=600)
        for h in range(HOSTS)
    ]
    notebooks = [make_queued_notebook(alpha, f"nb{i}", gpu=1) for i in range(NOTEBOOKS)]
    # Every other notebook is stopped by its user, early ones first: some while
    # queued, some once placed (their stop then completes and frees the GPU).
    to_stop = notebooks[::2]
    start, stopping_done = threading.Barrier(4), threading.Event()
    errors, seen = [], []

    def actor(work) -> None:
        try:
            start.wait()
            work()
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    def placer() -> None:
        while not stopping_done.is_set():
            place_queued()
        place_queued()

    def stopper() -> None:
        try:
            for notebook in to_stop:
                try:
                    stopped = services.stop(notebook, actor="alice")
                except InvalidState:  # placed meanwhile: STARTING, which a user cannot stop
                    started = Notebook.objects.get(pk=notebook.pk)
                    assert started.state == State.STARTING
                    # Its editor comes up (the host's part), then the user's stop goes through.
                    services.mark_running(
                        started, editor_url="http://127.0.0.1:1", runtime_state={}
                    )
                    stopped = services.stop(notebook, actor="alice")
                if stopped.state == State.STOPPING:
                    services.finish_stop(stopped, workspace_size=0)
        finally:
            stopping_done.set()

    def watcher() -> None:
        while not stopping_done.is_set():
            seen.append(held_gpus())

    place_queued()  # the first in line hold every GPU: some of those stopped are placed
    threads = [
        threading.Thread(target=actor, args=(work,)) for work in (placer, placer, stopper, watcher)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        place_queued()  # what the last completed stop freed

        # No GPU held twice, at any moment the watcher saw nor at the end.
        assert seen, "the watcher saw nothing"
        for gpus in [*seen, held_gpus()]:
            assert len(gpus) == len(set(gpus)), gpus
        # No notebook placed twice: one QUEUED -> STARTING event, one interval at most.
        for notebook in notebooks:
            placements = NotebookEvent.objects.filter(notebook=notebook, to_state=State.STARTING)
            assert placements.count() <= 1, notebook.name
            intervals = BillableInterval.objects.filter(notebook=notebook)
            assert intervals.count() == placements.count(), notebook.name
        assert NotebookEvent.objects.filter(notebook__in=to_stop, to_state=State.STOPPING).exists()
        # Those stopped end STOPPED, their capacity given back and billing closed;
        # the others took every GPU there is, first come first served.
        stopped = {n.pk for n in to_stop}
        for notebook in Notebook.objects.filter(pk__in=stopped):
            assert (notebook.state, notebook.host_id) == (State.STOPPED, None), notebook.name
        assert not BillableInterval.objects.filter(notebook__in=stopped, ended_at=None).exists()
        kept = Notebook.objects.exclude(pk__in=stopped).order_by("queued_at")
        states = [n.state for n in kept]
        assert states == [State.STARTING] * (HOSTS * GPUS_PER_HOST) + [State.QUEUED] * (
            len(states) - HOSTS * GPUS_PER_HOST
        )
        assert sorted(held_gpus()) == sorted(g for h in hosts for g in h.gpu_uuids)
        assert BillableInterval.objects.filter(ended_at=None).count() == HOSTS * GPUS_PER_HOST
    finally:
        purge_queues(broker_url, [h.queue for h in hosts] + ["control"])
