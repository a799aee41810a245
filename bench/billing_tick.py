"""The billing tick over N open intervals on PostgreSQL, beside a plain COPY.

For each N (default 1,000, 10,000, 100,000): N notebooks with an open
interval that has one commenced, unbilled minute; time `billing.services.tick`
(which writes N usage records), and, in the same run on the same server,
a COPY of N rows of the same shape into an empty table with the same
columns and indexes (the physical limit for this write). Medians of --repeat
runs; rows/s and the ratio tick / COPY. Usage:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/nbcloud_bench \\
        .venv/bin/python bench/billing_tick.py [--sizes 1000,10000,100000] [--repeat 3]

The database is created if missing, migrated, and its billing tables emptied.
"""

import argparse
import io
import json
import statistics
import time
import uuid
from datetime import timedelta
from pathlib import Path

from postgres import setup_django

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    setup_django()
    from django.db import connection
    from django.utils import timezone

    from nbcloud.billing.models import BillableInterval, UsageRecord
    from nbcloud.billing.services import tick
    from nbcloud.notebooks.models import Notebook
    from nbcloud.projects.models import Project

    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    for n in sizes:
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE billing_usagerecord, billing_billableinterval, billing_budget")
            cursor.execute("DROP TABLE IF EXISTS bench_copy")
            cursor.execute("CREATE TABLE bench_copy (LIKE billing_usagerecord INCLUDING ALL)")
        Notebook.objects.filter(project__name="bench").delete()
        project, _ = Project.objects.get_or_create(name="bench")
        notebooks = Notebook.objects.bulk_create(
            [
                Notebook(
                    project=project,
                    name=f"n{i}",
                    framework_id="conda",
                    framework_version="py311",
                    editor_id="jupyterlab",
                    flavor="ai1-1-cpu",
                    cpu=1,
                    region="GRA",
                )
                for i in range(n)
            ],
            batch_size=5000,
        )
        tick_times, copy_times = [], []
        for _ in range(args.repeat):
            now = timezone.now()
            UsageRecord.objects.all().delete()
            BillableInterval.objects.all().delete()
            BillableInterval.objects.bulk_create(
                [
                    BillableInterval(
                        notebook=nb,
                        project=project,
                        flavor="ai1-1-cpu",
                        units=1,
                        unit_price="0.000500",
                        currency="EUR",
                        started_at=now - timedelta(seconds=30),
                    )
                    for nb in notebooks
                ],
                batch_size=5000,
            )
            started = time.perf_counter()
            written = tick(now)
            tick_times.append(time.perf_counter() - started)
            assert written == n, (written, n)

            rows = io.StringIO()
            for i, nb in enumerate(notebooks):
                rows.write(
                    f"{i}\t0\t{project.pk}\t{nb.pk}\tai1-1-cpu\t1\t0.000500\tEUR\t{now.isoformat()}\n"
                )
            payload = rows.getvalue().encode()
            with connection.cursor() as cursor:
                cursor.execute("TRUNCATE bench_copy")
                started = time.perf_counter()
                with cursor.copy(
                    "COPY bench_copy (interval_id, minute, project_id, notebook_id, flavor, units, "
                    "amount, currency, starts_at) FROM STDIN"
                ) as copy:
                    copy.write(payload)
                copy_times.append(time.perf_counter() - started)
        tick_s, copy_s = statistics.median(tick_times), statistics.median(copy_times)
        results.append(
            {
                "n": n,
                "tick_s": tick_s,
                "copy_s": copy_s,
                "tick_rows_per_s": n / tick_s,
                "copy_rows_per_s": n / copy_s,
                "ratio_tick_over_copy": tick_s / copy_s,
                "tick_samples": tick_times,
                "copy_samples": copy_times,
            }
        )
        print(
            f"N={n:>7}: tick {tick_s:7.3f} s ({n / tick_s:>9.0f} rows/s)   "
            f"COPY {copy_s:7.3f} s ({n / copy_s:>9.0f} rows/s)   ratio {tick_s / copy_s:5.2f}"
        )
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_copy")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "billing_tick.json").write_text(
        json.dumps({"id": uuid.uuid4().hex, "results": results}, indent=2)
    )


if __name__ == "__main__":
    main()
