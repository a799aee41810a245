"""The control worker runs as two replicas on one broker and one database.

Two real `celery worker` processes consume the `control` and `billing`
queues while placement requests and beat's rounds (reconcile, limits,
billing) arrive in a burst, as they do when many users start notebooks at
once: every notebook that fits is placed once, each gets exactly one start
task, no GPU is given twice, and a beat round runs on one replica at a time.
"""

import json
import re
import threading

import pytest
from django.db import connection

from nbcloud import dispatch
from nbcloud.locks import one_at_a_time
from nbcloud.notebooks.models import Notebook, NotebookEvent
from nbcloud.notebooks.states import State
from support.factories import make_host, make_queued_notebook
from support.services import purge_queues, queues_to_ourselves, start_worker, stop_service
from support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)
HOSTS, GPUS_PER_HOST, NOTEBOOKS = 3, 2, 12
ROUNDS = [dispatch.SCHEDULE, dispatch.RECONCILE, dispatch.CHECK_LIMITS, dispatch.BILLING_TICK]


def start_tasks(broker_url: str, queue: str) -> list[str]:
    """The notebook ids of the start tasks waiting in a host's queue (none runs them)."""
    from nbcloud.celery import app

    with app.connection_for_write(broker_url) as conn:
        raw = conn.default_channel.client.lrange(queue, 0, -1)
    messages = [json.loads(m) for m in raw]
    return [
        re.findall(r"'([0-9a-f-]{36})'", m["headers"]["argsrepr"])[0]
        for m in messages
        if m["headers"]["task"] == dispatch.START
    ]


def finished(log: str) -> int:
    return log.count(" succeeded in ")


@pytest.fixture
def control_queues_to_ourselves():
    with queues_to_ourselves(["control", "billing"]):
        yield


@pytest.mark.e2e
def test_two_control_workers_place_each_notebook_once_and_share_the_rounds(
    alpha, broker_url, public_url, settings, control_queues_to_ourselves
):
    hosts = [
        make_host(f"rep-{h}", gpus=GPUS_PER_HOST, cpus=26, memory_gib=80, disk_gib=600)
        for h in range(HOSTS)
    ]
    notebooks = [make_queued_notebook(alpha, f"nb{i}", gpu=1) for i in range(NOTEBOOKS)]
    queues = [h.queue for h in hosts]
    purge_queues(broker_url, [*queues, "control", "billing"])
    # Their own host names: these hosts register with no GPU, so nothing lands there.
    replicas = [
        start_worker(
            broker_url, f"ctl-{r}", public_url, queues=["control", "billing"], name=f"ctl-{r}"
        )
        for r in "ab"
    ]
    logs = [settings.DATA_DIR / f"ctl-{r}.log" for r in "ab"]
    try:
        sent = 0
        for _ in range(10):
            for name in ROUNDS:
                dispatch.send(name)
                sent += 1
        # Both replicas' own start-up rounds (resume_control) count too.
        wait_for(
            lambda: sum(finished(log.read_text()) for log in logs) >= sent,
            timeout=120,
            what=f"{sent} control tasks done by the two replicas",
        )
        texts = [log.read_text() for log in logs]
        assert all(finished(text) > 0 for text in texts), "one replica took no task"
        assert all("Traceback" not in text for text in texts), texts

        placed = Notebook.objects.filter(state=State.STARTING)
        assert placed.count() == HOSTS * GPUS_PER_HOST
        gpus = [g for n in placed for g in n.gpu_uuids]
        assert sorted(gpus) == sorted(g for h in hosts for g in h.gpu_uuids)  # each once
        for notebook in notebooks:
            placements = NotebookEvent.objects.filter(notebook=notebook, to_state=State.STARTING)
            assert placements.count() <= 1, notebook.name
        starts = [pk for queue in queues for pk in start_tasks(broker_url, queue)]
        assert sorted(starts) == sorted(str(n.pk) for n in placed)  # one start task each
    finally:
        for proc in replicas:
            stop_service(proc)
        purge_queues(broker_url, [*queues, "control", "billing"])


def elsewhere(name: str) -> bool:
    """Whether another process (here a thread with its own connection) gets lock `name`."""
    got = []

    def attempt() -> None:
        try:
            with one_at_a_time(name) as held:
                got.append(held)
        finally:
            connection.close()

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join(30)
    return got[0]


def test_a_round_runs_on_one_holder_at_a_time(transactional_db):
    with one_at_a_time(dispatch.RECONCILE) as held:
        assert held
        assert not elsewhere(dispatch.RECONCILE)
        assert elsewhere(dispatch.CHECK_LIMITS)  # another round is another lock
    assert elsewhere(dispatch.RECONCILE)  # released
