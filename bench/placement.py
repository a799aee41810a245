"""Placement of N queued notebooks over H hosts on PostgreSQL, beside two baselines.

For each H x N (default 100 and 1,000 hosts x 1,000 and 10,000 notebooks):
H hosts in one region, each with 8 V100S GPUs, 128 vCPUs, 512 GiB and 4 TB;
N queued notebooks, 80% with 1 GPU, 10% with 2 GPUs, 10% with 2 vCPUs. One
`hosts.services.place_queued()` pass places what fits and gives the rest
their position in line: N decisions. Beside it, in the same run on the same
data:

- decide: the same decisions in memory alone (the pass's own Placer over the
  hosts' capacities, nothing written): what deciding costs;
- bare SQL: for each placed notebook the one conditional UPDATE that claims
  it (state, host, GPUs), and for each waiting one the UPDATE of its info,
  in one transaction: the least any placement that records its decisions
  must write.

Medians of --repeat runs; decisions/s and the ratios. Start tasks go to an
in-memory broker (the send is not what is measured). Usage:

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
            "billing_usagerecord CASCADE"
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
    from nbcloud.hosts.services import Placer, capacities
    from nbcloud.notebooks.models import Notebook

    hosts = list(Host.objects.filter(state=HostState.READY).order_by("name"))
    queued = list(Notebook.objects.filter(state="QUEUED").order_by("queued_at", "created_at"))
    started = time.perf_counter()
    placer = Placer(capacities(hosts).values())
    placed, waiting = [], []
    for notebook in queued:
        decision = placer.decide(notebook)
        if isinstance(decision, int):
            waiting.append(notebook.pk)
        else:
            placed.append((notebook.pk, decision[0].host.pk, decision[1]))
    return placed, waiting, time.perf_counter() - started


def bare_sql(placed: list, waiting: list) -> float:
    """One claiming UPDATE per placement, one info UPDATE per waiting notebook."""
    from django.db import connection, transaction

    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        for pk, host, gpus in placed:
            cursor.execute(
                "UPDATE notebooks_notebook SET state = 'STARTING', host_id = %s, gpu_uuids = %s "
                "WHERE id = %s AND state = 'QUEUED'",
                [host, json.dumps(gpus), pk],
            )
        for position, pk in enumerate(waiting, 1):
            cursor.execute(
                "UPDATE notebooks_notebook SET info_message = %s WHERE id = %s",
                [f"position {position}", pk],
            )
    return time.perf_counter() - started


def run_once(hosts: int, notebooks: int) -> dict:
    from nbcloud.hosts.services import place_queued
    from nbcloud.notebooks.models import Notebook

    populate(hosts, notebooks)
    placed, waiting, decide = decide_in_memory()
    bare = bare_sql(placed, waiting)

    populate(hosts, notebooks)
    started = time.perf_counter()
    done = place_queued()
    platform = time.perf_counter() - started
    assert len(done) == len(placed), (len(done), len(placed))
    assert Notebook.objects.filter(state="QUEUED").count() == len(waiting)
    return {"platform": platform, "decide": decide, "bare_sql": bare, "placed": len(placed)}


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
        f"{'hosts':>6} {'notebooks':>9} {'placed':>7} {'platform':>9} {'dec/s':>7} "
        f"{'decide':>8} {'bare SQL':>9} {'platform/(decide+SQL)':>22}"
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
            f"{hosts:>6} {notebooks:>9} {int(median['placed']):>7} {median['platform']:>8.2f}s "
            f"{row['decisions_per_s']:>7.0f} {median['decide']:>7.2f}s {median['bare_sql']:>8.2f}s "
            f"{row['ratio']:>22.2f}"
        )
    out = ROOT / "bench" / "results" / "placement.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"results in {out}")


if __name__ == "__main__":
    main()
