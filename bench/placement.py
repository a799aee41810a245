"""Placement of N queued notebooks over H hosts on PostgreSQL, beside two baselines.

For each H x N (default 100 and 1,000 hosts x 1,000 and 10,000 notebooks):
H hosts in one region, each with 8 V100S GPUs, 128 vCPUs, 512 GiB and 4 TB;
N queued notebooks, 80% with 1 GPU, 10% with 2 GPUs, 10% with 2 vCPUs. One
`hosts.services.place_queued()` pass places what fits and gives the rest
their position in line: N decisions. Beside it, in the same run on the same
data:

- decide: the same reads and decisions (the pass's own Placer over the
  hosts' capacities), nothing written: what reading and deciding cost;
- bare SQL: one UPDATE of the notebooks from arrays (placed ones claimed:
  state, host, GPUs; waiting ones given their position), in one
  transaction: the least any placement that records its decisions writes.

The pass is timed to its commit (its events, intervals and start tasks in
the outbox included); `send` is apart: the start tasks handed to the broker
(in memory here) after the commit and their outbox rows deleted. Medians of
--repeat runs; decisions/s and the ratios. Usage:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/nbcloud_bench \\
        .venv/bin/python bench/placement.py [--grid 100x1000,1000x10000] [--repeat 3]

The database is created if missing and migrated; its hosts and notebooks
are replaced.
"""

import argparse
import json
import statistics
import time
from datetime import timedelta
from pathlib import Path

from postgres import setup_django

ROOT = Path(__file__).resolve().parent.parent
GIB = 1024**3


def populate(hosts: int, notebooks: int):
    from django.db import connection
    from django.utils import timezone

    from nbcloud.hosts.models import Host
    from nbcloud.notebooks.models import Notebook
    from nbcloud.projects.models import Project

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE notebooks_notebook, hosts_host, billing_billableinterval, "
            "billing_usagerecord, dispatch_outboxmessage CASCADE"
        )
    Host.objects.bulk_create(
        [
            Host(
                name=f"gra-{h:04d}",
                region="GRA",
                cpus=128,
                memory_bytes=512 * GIB,
                disk_bytes=4000 * GIB,
                gpus=[
                    {
                        "index": i,
                        "uuid": f"GPU-{h:04d}-{i}",
                        "model": "Tesla V100S",
                        "memory_bytes": 0,
                    }
                    for i in range(8)
                ],
            )
            for h in range(hosts)
        ],
        batch_size=1000,
    )
    project, _ = Project.objects.get_or_create(name="bench")
    t0 = timezone.now() - timedelta(hours=1)
    rows = []
    for i in range(notebooks):
        kind = i % 10
        gpu = 2 if kind == 8 else 0 if kind == 9 else 1
        rows.append(
            Notebook(
                project=project,
                name=f"n{i}",
                framework_id="conda",
                framework_version="py311",
                editor_id="jupyterlab",
                flavor="ai1-1-gpu" if gpu else "ai1-1-cpu",
                gpu=gpu,
                cpu=0 if gpu else 2,
                region="GRA",
                state="QUEUED",
                queued_at=t0 + timedelta(milliseconds=i),
            )
        )
    Notebook.objects.bulk_create(rows, batch_size=5000)


def decide_in_memory() -> tuple[list, list, float]:
    """The pass's decisions, not written: (placed (id, host, gpus), waiting ids, seconds)."""
    from nbcloud.hosts.models import Host, HostState
    from nbcloud.hosts.services import Placed, Placer, capacities
    from nbcloud.notebooks.models import Notebook

    started = time.perf_counter()
    hosts = list(Host.objects.filter(state=HostState.READY).order_by("name"))
    queued = list(Notebook.objects.filter(state="QUEUED").order_by("queued_at", "created_at"))
    placer = Placer(capacities(hosts).values())
    placed, waiting = [], []
    for notebook in queued:
        decision = placer.decide(notebook)
        if isinstance(decision, Placed):
            placed.append((str(notebook.pk), decision.host.pk, list(decision.gpu_uuids)))
        else:
            waiting.append((str(notebook.pk), decision.position))
    return placed, waiting, time.perf_counter() - started


BARE_SQL = """
UPDATE notebooks_notebook AS n
SET state = v.state, host_id = v.host_id, gpu_uuids = v.gpus, info_message = v.message
FROM unnest(%s::uuid[], %s::text[], %s::int[], %s::jsonb[], %s::text[])
    AS v(id, state, host_id, gpus, message)
WHERE n.id = v.id AND n.state = 'QUEUED'
"""


def bare_sql(placed: list, waiting: list) -> float:
    """The least a pass that records its decisions writes: one UPDATE of the notebooks
    (claims and positions), in one transaction."""
    from django.db import connection, transaction

    rows = [(pk, "STARTING", host, json.dumps(gpus), "placed") for pk, host, gpus in placed]
    rows += [(pk, "QUEUED", None, "[]", f"position {position}") for pk, position in waiting]
    columns = [list(column) for column in zip(*rows, strict=True)]
    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(BARE_SQL, columns)
        assert cursor.rowcount == len(rows), (cursor.rowcount, len(rows))
    return time.perf_counter() - started


def run_once(hosts: int, notebooks: int) -> dict:
    from django.db import transaction

    from nbcloud.dispatch.models import OutboxMessage
    from nbcloud.hosts.services import place_queued
    from nbcloud.notebooks.models import Notebook

    populate(hosts, notebooks)
    placed, waiting, decide = decide_in_memory()
    bare = bare_sql(placed, waiting)

    populate(hosts, notebooks)
    committed = []
    started = time.perf_counter()
    with transaction.atomic():  # to time the pass to its commit, apart from the sends
        transaction.on_commit(lambda: committed.append(time.perf_counter()))  # runs first
        done = place_queued()
        kept = OutboxMessage.objects.count()
    platform = committed[0] - started
    send = time.perf_counter() - committed[0]
    assert len(done) == len(placed) == kept, (len(done), len(placed), kept)
    assert not OutboxMessage.objects.exists()  # every start task went to the broker
    assert Notebook.objects.filter(state="QUEUED").count() == len(waiting)
    return {
        "platform": platform,
        "decide": decide,
        "bare_sql": bare,
        "send": send,
        "placed": len(placed),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grid", default="100x1000,100x10000,1000x1000,1000x10000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    setup_django()
    from nbcloud.celery import app

    app.conf.broker_url = "memory://"

    results = []
    print(
        f"{'hosts':>6} {'notebooks':>9} {'placed':>7} {'pass':>8} {'dec/s':>7} "
        f"{'decide':>8} {'bare SQL':>9} {'pass/(decide+SQL)':>18} {'send':>7}"
    )
    for cell in args.grid.split(","):
        hosts, notebooks = (int(x) for x in cell.split("x"))
        runs = [run_once(hosts, notebooks) for _ in range(args.repeat)]
        median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        row = {
            "hosts": hosts,
            "notebooks": notebooks,
            **median,
            "decisions_per_s": notebooks / median["platform"],
            "ratio": median["platform"] / (median["decide"] + median["bare_sql"]),
            "samples": runs,
        }
        results.append(row)
        print(
            f"{hosts:>6} {notebooks:>9} {int(median['placed']):>7} {median['platform']:>7.3f}s "
            f"{row['decisions_per_s']:>7.0f} {median['decide']:>7.3f}s {median['bare_sql']:>8.3f}s "
            f"{row['ratio']:>18.2f} {median['send']:>6.2f}s"
        )
    out = ROOT / "bench" / "results" / "placement.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"results in {out}")


if __name__ == "__main__":
    main()
