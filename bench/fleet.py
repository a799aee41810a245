"""A fleet's day on PostgreSQL and Redis: each periodic round's time as the fleet grows.

For each scale S (default 1, 10, 100): 10·S simulated hosts (rows and
heartbeats, 8 V100S GPUs each, no real editors) and 100·S notebooks in
10·S projects of 10; about half of them start running before the clock starts
(placed by the real pass, their intervals opened). Then --rounds rounds,
each a compressed minute of the day with the same amount of change at every
scale: users start and stop notebooks, idle stops, two hosts go silent (lost
at the next reconcile) and come back three rounds later, one project
reaches its budget (stop_running) mid-day. Each round times the real
periodic tasks, as beat would run them:

- place: `hosts.services.place_queued()` (the `schedule` task);
- reconcile: `notebooks.reconcile.run(now)` (host losses, placement, stuck
  tasks sent again; each host checks its own editors at its heartbeat, on
  the host, so that is not the control plane's round);
- billing: `billing.services.tick(now)` and `limits.enforce_budgets(now)`;
- limits: `monitoring.limits.check_limits(now)`;
- scrape: the Prometheus exposition (`generate_latest(registry())`).

Between rounds a fake runtime plays the hosts' part of the runtime contract
(allowed here only): a start reaches RUNNING, a stop ends STOPPED, a restart
runs again; the tasks the control plane sent to the hosts' queues are taken
off Redis. At the end the books are checked: every billed minute lies in a
billable interval and every closed interval is billed to its last minute, no
notebook is lost (each holding capacity has one open interval on a live
host, none other has one), no GPU is held twice.

Medians per round, and each scale's ratio to the first. Usage:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/nbcloud_bench \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/14 \\
        .venv/bin/python bench/fleet.py [--scales 1,10,100] [--rounds 10] [--plot]

The database is created if missing and migrated; its hosts, notebooks and
billing rows are replaced. The broker's host queues are emptied.
"""

import argparse
import contextlib
import json
import random
import statistics
import time
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from postgres import setup_django

ROOT = Path(__file__).resolve().parent.parent
GIB = 1024**3
TASKS = ["place", "reconcile", "billing", "limits", "scrape"]
# Change per round, the same at every scale.
STARTS, STOPS, IDLE_STOPS, SILENT_HOSTS = 20, 10, 5, 2


def populate(scale: int, rng: random.Random) -> None:
    from django.db import connection

    from nbcloud.hosts.models import Host
    from nbcloud.notebooks.models import Notebook
    from nbcloud.projects.models import Project

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE notebooks_notebook, hosts_host, billing_billableinterval, "
            "billing_usagerecord, billing_budget, dispatch_outboxmessage, "
            "projects_project CASCADE"
        )
    Host.objects.bulk_create(
        Host(
            name=f"sim-{h:05d}",
            region="GRA",
            cpus=128,
            memory_bytes=1024 * GIB,
            disk_bytes=8000 * GIB,
            gpus=[
                {"index": i, "uuid": f"GPU-{h:05d}-{i}", "model": "Tesla V100S", "memory_bytes": 0}
                for i in range(8)
            ],
        )
        for h in range(10 * scale)
    )
    projects = Project.objects.bulk_create(
        Project(name=f"fleet-{p}", gpu_quota=100_000) for p in range(10 * scale)
    )
    rows = []
    for i in range(100 * scale):
        gpu = 0 if i % 5 == 4 else 1
        rows.append(
            Notebook(
                project=projects[i // 10],
                name=f"n{i}",
                framework_id="conda",
                framework_version="py311",
                editor_id="jupyterlab",
                flavor="ai1-1-gpu" if gpu else "ai1-1-cpu",
                gpu=gpu,
                cpu=0 if gpu else 2,
                region="GRA",
                state="QUEUED" if rng.random() < 0.5 else "STOPPED",
            )
        )
    Notebook.objects.bulk_create(rows, batch_size=5000)


def fake_runtime() -> None:
    """The hosts' part: starts come up, stops save and end, restarts run again; the
    tasks sent to the hosts' queues are taken off the broker."""
    from nbcloud.celery import app
    from nbcloud.notebooks import services
    from nbcloud.notebooks.models import Notebook

    for notebook in Notebook.objects.filter(
        state__in=["STARTING", "RESTARTING"], host__isnull=False
    ):
        services.mark_running(notebook, editor_url="http://127.0.0.1:1", runtime_state={})
    for notebook in Notebook.objects.filter(state="STOPPING"):
        services.finish_stop(notebook, workspace_size=0)
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        keys = list(client.scan_iter("host.sim-*", count=1000))
        if keys:
            client.delete(*keys)


def heartbeats(silent: set[str]) -> None:
    from django.utils import timezone

    from nbcloud.hosts.models import Host

    Host.objects.exclude(name__in=silent).update(last_heartbeat_at=timezone.now())


def user_changes(rng: random.Random, round_: int, silent: set[str], budgeted: list) -> None:
    """What users, idleness, hosts and budgets change this round (not timed)."""
    from django.conf import settings
    from django.utils import timezone

    from nbcloud.billing.models import Budget
    from nbcloud.errors import DomainError
    from nbcloud.hosts import services as hosts
    from nbcloud.hosts.models import Host, HostState
    from nbcloud.notebooks import services
    from nbcloud.notebooks.models import Notebook
    from nbcloud.notebooks.states import InfoCode

    def pick(state: str, count: int) -> list:
        ids = list(Notebook.objects.filter(state=state).values_list("pk", flat=True))
        return list(Notebook.objects.filter(pk__in=rng.sample(ids, min(count, len(ids)))))

    for notebook in pick("STOPPED", STARTS):
        with contextlib.suppress(DomainError):  # over budget: refused, as the API would
            services.start(notebook, actor="user")
    for notebook in pick("RUNNING", STOPS):
        services.stop(notebook, actor="user")
    for notebook in pick("RUNNING", IDLE_STOPS):
        services.stop(
            notebook,
            actor=services.SYSTEM,
            code=InfoCode.IDLE_TIMEOUT,
            message="Idle; stopped, the workspace is saved.",
        )
    if round_ == 3:  # two hosts go silent: the next reconcile finds them lost
        names = list(Host.objects.filter(state=HostState.READY).values_list("name", flat=True))
        silent.update(rng.sample(names, SILENT_HOSTS))
        stale = timezone.now() - timedelta(seconds=settings.NBCLOUD_HOST_LOST_AFTER + 60)
        Host.objects.filter(name__in=silent).update(last_heartbeat_at=stale)
    if round_ == 6:  # and answer again
        for name in sorted(silent):
            hosts.heartbeat(name)
        silent.clear()
    if round_ == 5:  # a project has spent its budget: its running notebooks stop
        project = Notebook.objects.filter(state="RUNNING").first().project
        Budget.objects.create(project=project, monthly_amount=Decimal("0.01"), stop_running=True)
        budgeted.append(project.pk)


def run_round(now) -> dict:
    from prometheus_client import generate_latest

    from nbcloud.billing.services import tick
    from nbcloud.hosts.services import place_queued
    from nbcloud.monitoring import limits
    from nbcloud.monitoring.collectors import registry
    from nbcloud.notebooks import reconcile

    def billing() -> None:
        tick(now)
        limits.enforce_budgets(now)

    work = {
        "place": place_queued,
        "reconcile": lambda: reconcile.run(now),
        "billing": billing,
        "limits": lambda: limits.check_limits(now),
        "scrape": lambda: generate_latest(registry()),
    }
    times = {}
    for name in TASKS:
        started = time.perf_counter()
        work[name]()
        times[name] = time.perf_counter() - started
    return times


def check_books(budgeted: list) -> dict:
    """The end-of-day audit; raises AssertionError on the first thing wrong."""
    from django.db import connection
    from django.utils import timezone

    from nbcloud.billing.models import BillableInterval
    from nbcloud.billing.services import tick
    from nbcloud.hosts.models import Host, HostState
    from nbcloud.monitoring import limits
    from nbcloud.notebooks.models import Notebook
    from nbcloud.notebooks.states import QUOTA_STATES

    limits.enforce_budgets(timezone.now())  # the day's last round, its hosts' part done
    fake_runtime()
    now = timezone.now()
    tick(now)
    holding = Notebook.objects.exclude(host=None)
    assert set(holding.values_list("state", flat=True)) <= set(QUOTA_STATES)
    assert not holding.filter(host__state=HostState.LOST).exists(), "a notebook on a lost host"
    gpus = [g for row in holding.values_list("gpu_uuids", flat=True) for g in row]
    assert len(gpus) == len(set(gpus)), "a GPU held twice"
    per_host = Counter(holding.filter(gpu__gt=0).values_list("host_id", flat=True))
    assert all(count <= 8 for count in per_host.values()), "a host holds more than its GPUs"
    open_ = Counter(
        BillableInterval.objects.filter(ended_at=None).values_list("notebook_id", flat=True)
    )
    assert set(open_) == set(holding.values_list("pk", flat=True)), "open intervals != holders"
    assert max(open_.values(), default=1) == 1, "two open intervals for one notebook"
    assert Notebook.objects.count() == Host.objects.count() * 10, "a notebook lost"
    with connection.cursor() as cursor:
        # Every billed minute inside its interval; every interval billed minute by minute
        # to its end (or to now), nothing twice (the unique key forbids it anyway).
        cursor.execute(
            """
            SELECT count(*) FILTER (WHERE r.starts_at < i.started_at
                                     OR r.starts_at >= COALESCE(i.ended_at, %s)),
                   count(*)
            FROM billing_usagerecord r JOIN billing_billableinterval i ON i.id = r.interval_id
            """,
            [now],
        )
        outside, records = cursor.fetchone()
        cursor.execute(
            """
            SELECT count(*) FROM billing_billableinterval i
            WHERE (SELECT count(*) FROM billing_usagerecord r WHERE r.interval_id = i.id)
               <> GREATEST(0, CEIL(EXTRACT(EPOCH FROM (COALESCE(i.ended_at, %s) - i.started_at))
                                   / 60))::int
            """,
            [now],
        )
        (misbilled,) = cursor.fetchone()
    assert outside == 0, f"{outside} billed minutes outside their interval"
    assert misbilled == 0, f"{misbilled} intervals not billed minute by minute"
    assert not Notebook.objects.filter(project__in=budgeted, state="RUNNING").exists()
    return {
        "records": records,
        "intervals": BillableInterval.objects.count(),
        "holding": holding.count(),
        "states": dict(Counter(Notebook.objects.values_list("state", flat=True))),
    }


def run_scale(scale: int, rounds: int, seed: int) -> dict:
    from django.utils import timezone

    from nbcloud.hosts.services import place_queued
    from nbcloud.notebooks.models import Notebook

    rng = random.Random(seed)
    populate(scale, rng)
    place_queued()
    fake_runtime()
    silent: set[str] = set()
    budgeted: list = []
    samples = []
    for round_ in range(rounds):
        user_changes(rng, round_, silent, budgeted)
        heartbeats(silent)
        samples.append(run_round(timezone.now()))
        fake_runtime()
    books = check_books(budgeted)
    median = {name: statistics.median(s[name] for s in samples) for name in TASKS}
    return {
        "scale": scale,
        "hosts": 10 * scale,
        "notebooks": 100 * scale,
        "running_at_end": Notebook.objects.filter(state="RUNNING").count(),
        "median_s": median,
        "samples": samples,
        "books": books,
    }


def plot(results: list, out: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = [r["notebooks"] for r in results]
    for name in TASKS:
        ax.plot(sizes, [r["median_s"][name] * 1000 for r in results], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("notebooks (hosts = notebooks / 10)")
    ax.set_ylabel("median time per round (ms)")
    ax.set_title("Periodic rounds against fleet size (same change per round)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scales", default="1,10,100")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--plot", action="store_true", help="draw bench/results/fleet.png")
    args = parser.parse_args()
    setup_django()
    import logging

    logging.disable(logging.INFO)  # a line per notebook moved would time the logger

    results = []
    header = " ".join(f"{name:>10}" for name in TASKS)
    print(f"{'hosts':>6} {'notebooks':>9} {header}   (median ms per round)")
    for scale in (int(s) for s in args.scales.split(",")):
        row = run_scale(scale, args.rounds, args.seed)
        results.append(row)
        cells = " ".join(f"{row['median_s'][name] * 1000:>10.1f}" for name in TASKS)
        print(f"{row['hosts']:>6} {row['notebooks']:>9} {cells}   books ok: {row['books']}")
    base = results[0]["median_s"]
    for row in results[1:]:
        ratios = " ".join(f"{row['median_s'][n] / base[n]:>10.1f}" for n in TASKS)
        print(f"{'x' + str(row['scale']):>16} {ratios}   (ratio to the smallest fleet)")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "fleet.json").write_text(json.dumps(results, indent=2, default=str))
    if args.plot and plot(results, out / "fleet.png"):
        print(f"plot in {out / 'fleet.png'}")
    print(f"results in {out / 'fleet.json'}")


if __name__ == "__main__":
    main()
