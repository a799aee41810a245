"""The console's notebooks page for a project with N notebooks, beside the API's list of
the same notebooks, in the same run on the same PostgreSQL.

Both in-process through Django's test client (no network, no server: the view's own
cost), signed in as an operator of the project; the API's list asks for all N in one
page (`?size=N`, at most 1,000). Reports the median time of --repeat requests and the
number of SQL queries of each. Usage:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/nbcloud_bench \\
        .venv/bin/python bench/console.py [--sizes 10,100,1000] [--repeat 5]
"""

import argparse
import json
import statistics
import time

from postgres import setup_django


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    setup_django()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from rest_framework.test import APIClient

    from nbcloud.notebooks.models import Notebook
    from nbcloud.projects.models import Membership, Project, Role

    user, _ = get_user_model().objects.get_or_create(username="console-bench")
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        _empty()
        project = Project.objects.create(name="console-bench")
        Membership.objects.create(project=project, user=user, role=Role.OPERATOR)
        Notebook.objects.bulk_create(
            Notebook(
                project=project,
                name=f"nb-{i}",
                framework_id="conda",
                framework_version="py311",
                editor_id="jupyterlab",
                flavor="ai1-1-cpu",
                cpu=1,
                region="GRA",
                state="STOPPED",
                labels={"team": f"t{i % 7}"},
            )
            for i in range(n)
        )
        page, api = Client(), APIClient()
        page.force_login(user)
        api.force_authenticate(user)
        row = {"notebooks": n}
        for what, client, url in (
            ("console page", page, "/projects/console-bench/"),
            ("API list", api, f"/api/v1/projects/console-bench/notebooks/?size={min(n, 1000)}"),
        ):
            times = []
            for _ in range(args.repeat):
                with CaptureQueriesContext(connection) as queries:
                    began = time.perf_counter()
                    reply = client.get(url)
                    times.append(time.perf_counter() - began)
                assert reply.status_code == 200, (what, reply.status_code)
            row[what] = {"ms": round(statistics.median(times) * 1000, 1), "queries": len(queries)}
        row["ratio"] = round(row["console page"]["ms"] / row["API list"]["ms"], 2)
        results.append(row)
        print(json.dumps(row))
    _empty()


def _empty() -> None:
    from nbcloud.notebooks.models import Notebook
    from nbcloud.projects.models import Project

    Notebook.objects.filter(project__name="console-bench").delete()
    Project.objects.filter(name="console-bench").delete()


if __name__ == "__main__":
    main()
