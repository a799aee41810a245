"""Schedulers racing for the last GPU: exactly one notebook gets it.

Each scheduler is a thread with its own database connection that queues a
notebook and places at once, as the API's `schedule` tasks do on several
control workers. Run on PostgreSQL in CI (row locks) and on SQLite here
(the writer lock).
"""

import threading

import pytest
from django.db import connection

from nbcloud.hosts.services import place_queued
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import State
from support.factories import make_host, make_queued_notebook
from support.services import purge_queues

pytestmark = pytest.mark.django_db(transaction=True)
SCHEDULERS = 4


def race(alpha, name: str) -> list[Exception]:
    start, errors = threading.Barrier(SCHEDULERS), []

    def scheduler(i: int) -> None:
        try:
            start.wait()
            make_queued_notebook(alpha, f"{name}-{i}", gpu=1)
            place_queued()
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=scheduler, args=(i,)) for i in range(SCHEDULERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


def test_schedulers_racing_for_the_last_gpu_place_exactly_one(alpha, broker_url):
    host = make_host("last-gpu", gpus=1, cpus=13, memory_gib=40, disk_gib=300)
    try:
        for round_ in range(5):
            assert race(alpha, f"round{round_}") == []
            holders = list(Notebook.objects.filter(host=host))
            assert len(holders) == 1, [(n.name, n.gpu_uuids) for n in holders]
            assert holders[0].gpu_uuids == host.gpu_uuids
            waiting = Notebook.objects.filter(state=State.QUEUED, name__startswith=f"round{round_}")
            assert waiting.count() == SCHEDULERS - 1
            # Free the GPU and clear the line for the next round.
            Notebook.objects.filter(host=host).update(state=State.STOPPED, host=None, gpu_uuids=[])
            waiting.update(state=State.STOPPED)
    finally:
        purge_queues(broker_url, [f"host.{host.name}"])
