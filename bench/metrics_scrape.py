"""`/metrics` over a fleet of N notebooks on PostgreSQL, beside the bare queries.

For each N (default 1,000, 10,000, 100,000): N notebooks spread over the
states, two regions and N/50 hosts of 8 GPUs (a tenth of the notebooks
running, each on a GPU); time rendering the platform's exposition (what a
scrape costs, without HTTP), and, in the same run on the same server, the
baseline: the plain SQL statements the fleet series need at least (notebooks
counted by state and region, hosts by region and state, GPUs of the hosts and
GPUs held, by region). Medians of --repeat runs
and the ratio. Also the JSON metrics API's read of one notebook's last hour
(720 samples) among 100 sampled notebooks, beside a plain SELECT of the same
rows. Usage:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/nbcloud_bench \\
        .venv/bin/python bench/metrics_scrape.py [--sizes 1000,10000,100000] [--repeat 5]
"""

import argparse
import json
import statistics
import time
import uuid
from datetime import timedelta
from pathlib import Path

from postgres import setup_django

ROOT = Path(__file__).resolve().parent.parent
STATES = ["QUEUED", "RUNNING", "STOPPED", "STOPPED", "STOPPED", "FAILED", "STOPPED", "STOPPED"]


def timed(func, repeat: int) -> tuple[float, list[float]]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        func()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), samples


def notebook_row(project, name: str, **fields):
    from nbcloud.notebooks.models import Notebook

    spec = {
        "framework_id": "conda",
        "framework_version": "py311",
        "editor_id": "jupyterlab",
        "flavor": "ai1-1-cpu",
        "cpu": 1,
        "region": "GRA",
    }
    return Notebook(project=project, name=name, **{**spec, **fields})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    setup_django()
    from django.db import connection
    from django.utils import timezone
    from prometheus_client import generate_latest

    from nbcloud.hosts.models import Host
    from nbcloud.monitoring.collectors import registry
    from nbcloud.monitoring.models import NotebookSample
    from nbcloud.monitoring.samples import series
    from nbcloud.notebooks.models import Notebook
    from nbcloud.projects.models import Project

    def reset():
        NotebookSample.objects.all().delete()
        Notebook.objects.filter(project__name="bench-metrics").delete()
        Host.objects.filter(name__startswith="bench-gpu-").delete()

    def bare_queries():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT state, region, count(*) FROM notebooks_notebook "
                "WHERE state <> 'DELETED' GROUP BY state, region"
            )
            cursor.fetchall()
            cursor.execute("SELECT region, state, count(*) FROM hosts_host GROUP BY region, state")
            cursor.fetchall()
            cursor.execute(
                "SELECT region, sum(jsonb_array_length(gpus)) FROM hosts_host "
                "WHERE state <> 'LOST' GROUP BY region"
            )
            cursor.fetchall()
            cursor.execute(
                "SELECT h.region, sum(jsonb_array_length(n.gpu_uuids)) FROM notebooks_notebook n "
                "JOIN hosts_host h ON h.id = n.host_id WHERE h.state <> 'LOST' GROUP BY h.region"
            )
            cursor.fetchall()

    reset()
    project, _ = Project.objects.get_or_create(name="bench-metrics")
    results = []
    for n in [int(s) for s in args.sizes.split(",")]:
        reset()
        hosts = Host.objects.bulk_create(
            [
                Host(
                    name=f"bench-gpu-{h}",
                    region="GRA" if h % 2 else "BHS",
                    cpus=96,
                    memory_bytes=2**40,
                    disk_bytes=2**42,
                    gpus=[{"index": g, "uuid": f"GPU-{h}-{g}", "model": "H100"} for g in range(8)],
                )
                for h in range(max(1, n // 50))
            ]
        )
        rows = []
        for i in range(n):
            state = STATES[i % len(STATES)]
            host = hosts[i % len(hosts)] if state == "RUNNING" else None
            rows.append(
                notebook_row(
                    project,
                    f"n{i}",
                    flavor="ai1-1-gpu",
                    gpu=1,
                    cpu=0,
                    region="GRA" if i % 2 else "BHS",
                    state=state,
                    host=host,
                    gpu_uuids=[f"GPU-{host.name}-{i % 8}"] if host else [],
                )
            )
        Notebook.objects.bulk_create(rows, batch_size=5000)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE notebooks_notebook")
        scrape_s, scrape_samples = timed(lambda: generate_latest(registry()), args.repeat)
        bare_s, bare_samples = timed(bare_queries, args.repeat)
        results.append(
            {
                "n": n,
                "hosts": len(hosts),
                "scrape_s": scrape_s,
                "bare_sql_s": bare_s,
                "ratio": scrape_s / bare_s,
                "scrape_samples": scrape_samples,
                "bare_samples": bare_samples,
            }
        )
        print(
            f"N={n:>7} ({len(hosts):>5} hosts): scrape {scrape_s * 1000:8.1f} ms   "
            f"bare SQL {bare_s * 1000:8.1f} ms   ratio {scrape_s / bare_s:5.2f}"
        )

    # One notebook's last hour among 100 sampled ones (the JSON metrics API's read).
    reset()
    sampled = Notebook.objects.bulk_create(
        [notebook_row(project, f"s{i}", state="RUNNING") for i in range(100)]
    )
    now = timezone.now()
    NotebookSample.objects.bulk_create(
        [
            NotebookSample(
                notebook=nb,
                host="h",
                at=now - timedelta(seconds=5 * k),
                cpu_cores=0.5,
                memory_bytes=2**30,
                gpus=[{"uuid": "GPU-1", "utilization_percent": 50}],
            )
            for nb in sampled
            for k in range(720)
        ],
        batch_size=10000,
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE monitoring_notebooksample")
    one = sampled[50]

    def bare_read():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT * FROM monitoring_notebooksample WHERE notebook_id = %s AND at >= %s "
                "ORDER BY at, id",
                [one.pk, now - timedelta(hours=1)],
            )
            cursor.fetchall()

    series_s, series_samples = timed(lambda: series(one, None), args.repeat)
    read_s, read_samples = timed(bare_read, args.repeat)
    print(
        f"one notebook's hour (720 of 72,000 samples): series {series_s * 1000:6.1f} ms   "
        f"bare SELECT {read_s * 1000:6.1f} ms   ratio {series_s / read_s:5.2f}"
    )
    reset()
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "metrics_scrape.json").write_text(
        json.dumps(
            {
                "id": uuid.uuid4().hex,
                "scrape": results,
                "series": {
                    "series_s": series_s,
                    "bare_s": read_s,
                    "ratio": series_s / read_s,
                    "series_samples": series_samples,
                    "bare_samples": read_samples,
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
