"""The notebook list at size: 100,000 notebooks in a project, 1,000,000 usage rows.

A page of 100 through the API (`GET /api/v1/projects/<p>/notebooks/`, the
whole Django stack in process: middleware, session auth, access rules,
pagination, serializer with each notebook's cost to date), for the first
page, a page deep in the list by its number (OFFSET) and by the cursor of the
previous page's `next` link, a state filter and a label selector; beside,
in the same run on the same rows, the bare SQL of the same page: the page's
rows, the count, and the month's usage summed for those 100 notebooks.
Queries per request, p50 and p90 of --repeat requests, the ratio of p50s.
Usage:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/nbcloud_bench \\
        .venv/bin/python bench/api_list.py [--notebooks 100000] [--records 1000000] [--repeat 30]

The project `api-bench` is made once and kept between runs of the same size.
"""

import argparse
import json
import statistics
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from postgres import setup_django

ROOT = Path(__file__).resolve().parent.parent
PAGE = 100
STATES = ["STOPPED"] * 6 + ["RUNNING", "QUEUED", "FAILED", "STOPPED"]


def populate(notebooks: int, records: int):
    from django.contrib.auth import get_user_model
    from django.db import connection

    from nbcloud.notebooks.models import Notebook
    from nbcloud.projects.models import Membership, Project, Role

    user, _ = get_user_model().objects.get_or_create(username="api-bench")
    project = Project.objects.filter(name="api-bench").first()
    kept = project is not None and project.notebooks.count() == notebooks
    if kept and Membership.objects.filter(project=project, user=user).exists():
        return user, project
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE notebooks_notebook, billing_billableinterval, billing_usagerecord, "
            "dispatch_outboxmessage, hosts_host CASCADE"
        )
    Project.objects.filter(name="api-bench").delete()
    project = Project.objects.create(name="api-bench")
    Membership.objects.create(project=project, user=user, role=Role.OWNER)
    Notebook.objects.bulk_create(
        (
            Notebook(
                project=project,
                name=f"nb-{i}",
                framework_id="conda",
                framework_version="py311",
                editor_id="jupyterlab",
                flavor="ai1-1-cpu",
                cpu=1,
                region="GRA",
                state=STATES[i % len(STATES)],
                labels={"team": "vision" if i % 10 == 0 else f"t{i % 7}"},
            )
            for i in range(notebooks)
        ),
        batch_size=5000,
    )
    # One interval per billed notebook, its minutes billed this month: `records` rows.
    minutes = 100
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO billing_billableinterval
                (notebook_id, project_id, flavor, units, unit_price, currency, started_at, ended_at)
            SELECT id, project_id, flavor, 1, 0.01, 'EUR', date_trunc('month', now()),
                   date_trunc('month', now()) + %s * interval '1 minute'
            FROM notebooks_notebook WHERE project_id = %s ORDER BY created_at LIMIT %s
            """,
            [minutes, project.pk, records // minutes],
        )
        cursor.execute(
            """
            INSERT INTO billing_usagerecord
                (interval_id, minute, project_id, notebook_id, flavor, units, amount, currency,
                 starts_at)
            SELECT i.id, k, i.project_id, i.notebook_id, i.flavor, 1, 0.01, 'EUR',
                   i.started_at + k * interval '1 minute'
            FROM billing_billableinterval i CROSS JOIN generate_series(0, %s - 1) AS k
            WHERE i.project_id = %s
            """,
            [minutes, project.pk],
        )
    return user, project


BARE = {
    "rows": """
        SELECT n.*, h.name FROM notebooks_notebook n LEFT JOIN hosts_host h ON h.id = n.host_id
        WHERE n.project_id = %s AND n.state <> 'DELETED' {where}
        ORDER BY n.created_at, n.id LIMIT {page} OFFSET %s
    """,
    "count": """
        SELECT count(*) FROM notebooks_notebook n
        WHERE n.project_id = %s AND n.state <> 'DELETED' {where}
    """,
    "costs": """
        SELECT notebook_id, currency, sum(amount) FROM billing_usagerecord
        WHERE notebook_id = ANY(%s) AND starts_at >= date_trunc('month', now())
        GROUP BY notebook_id, currency
    """,
}


def bare_page(project_id: int, offset: int, where: str, params: list) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(BARE["rows"].format(where=where, page=PAGE), [project_id, *params, offset])
        ids = [row[0] for row in cursor.fetchall()]
        cursor.execute(BARE["count"].format(where=where), [project_id, *params])
        cursor.fetchone()
        cursor.execute(BARE["costs"], [ids])
        cursor.fetchall()


def timed(func, repeat: int) -> list[float]:
    func()  # warm
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        func()
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--notebooks", type=int, default=100_000)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    setup_django()
    import logging

    from django.conf import settings
    from django.db import connection
    from django.test import Client

    from nbcloud.api.pagination import decode_cursor

    logging.disable(logging.WARNING)
    settings.ALLOWED_HOSTS = ["*"]
    user, project = populate(args.notebooks, args.records)
    with connection.cursor() as cursor:  # as autovacuum leaves a settled table
        cursor.execute("VACUUM ANALYZE notebooks_notebook, billing_usagerecord")
    client = Client()
    client.force_login(user)
    base = f"/api/v1/projects/{project.name}/notebooks/"
    middle = (args.notebooks // PAGE // 2) * PAGE
    # The same deep page reached by its cursor: the `next` link of the page before it.
    before = client.get(base, {"size": PAGE, "page": middle // PAGE}).json()["next"]
    after = parse_qs(urlsplit(before).query)["after"][0]
    at, pk = decode_cursor("after", after)
    cases = [
        ("first page", {"size": PAGE}, 0, "", []),
        (f"page {middle // PAGE + 1}", {"size": PAGE, "page": middle // PAGE + 1}, middle, "", []),
        (
            f"page {middle // PAGE + 1} by cursor",
            {"size": PAGE, "after": after},
            0,
            "AND (n.created_at, n.id) > (%s, %s)",
            [at, pk],
        ),
        ("state=RUNNING", {"size": PAGE, "state": "RUNNING"}, 0, "AND n.state = %s", ["RUNNING"]),
        (
            "label team=vision",
            {"size": PAGE, "label_selector": "team=vision"},
            0,
            "AND n.labels @> %s::jsonb",
            ['{"team": "vision"}'],
        ),
    ]
    results = []
    print(f"{args.notebooks:,} notebooks, {args.records:,} usage rows; a page of {PAGE}")
    print(f"{'page':<20} {'queries':>7} {'API p50':>9} {'p90':>8} {'bare p50':>9} {'ratio':>6}")
    for name, query, offset, where, params in cases:

        def api(query=query):
            reply = client.get(base, query)
            assert reply.status_code == 200, reply.content[:300]
            assert len(reply.json()["results"]) == PAGE

        queries: list[str] = []

        def count(run, sql, *rest, seen=queries):
            seen.append(sql)
            return run(sql, *rest)

        with connection.execute_wrapper(count):
            api()
        api_s = timed(api, args.repeat)
        bare_s = timed(
            lambda o=offset, w=where, p=params: bare_page(project.pk, o, w, p), args.repeat
        )
        row = {
            "page": name,
            "queries": len(queries),
            "api_p50": statistics.median(api_s),
            "api_p90": statistics.quantiles(api_s, n=10)[-1],
            "bare_p50": statistics.median(bare_s),
            "api_samples": api_s,
            "bare_samples": bare_s,
        }
        row["ratio"] = row["api_p50"] / row["bare_p50"]
        results.append(row)
        print(
            f"{name:<20} {row['queries']:>7} {row['api_p50'] * 1000:>7.1f}ms "
            f"{row['api_p90'] * 1000:>6.1f}ms {row['bare_p50'] * 1000:>7.1f}ms {row['ratio']:>6.2f}"
        )
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "api_list.json").write_text(json.dumps(results, indent=2))
    print(f"results in {out / 'api_list.json'}")


if __name__ == "__main__":
    main()
