"""Load: N API clients and M kernel WebSockets against the platform, beside a bare DRF endpoint.

Runs the platform as production does, on PostgreSQL (DATABASE_URL) and Redis
(CELERY_BROKER_URL): uvicorn with --web-workers processes (settings
`bench.load_settings`: the platform's, plus one bare DRF endpoint), a Celery
worker for control, billing and this host, and beat. The database named in
DATABASE_URL is dropped and made anew, and the Redis database emptied: give the
benchmark databases of its own.

Set-up: --projects projects, each with an operator token and --seed stopped
notebooks (made through the API); --kernel-notebooks CPU notebooks started
for real (conda + JupyterLab: `make envs`). The host offers only their CPUs,
so the notebooks the clients create wait in QUEUED, as on a full fleet.

Then, with locust as a library (headless), for --duration seconds after all
clients have started:
  - --users API clients (FastHttpUser, 1-3 s between tasks), each on one
    project's token: lists, gets, events, project status, quota, flavors;
    creates of CPU notebooks that they stop and delete at once; and the same
    requests, with the same token, to `/bench/bare/` (the baseline: uvicorn,
    Django's middleware, DRF, the token's lookup, a JSON answer);
  - --websockets clients that each open a kernel on one of the running
    notebooks through the gateway (REST, then its WebSocket) and execute
    `1 + 1` every 2-5 s.
Reports each endpoint's p50/p99 (ms), its errors by status, the ratio to the
bare endpoint, and the goals: zero 5xx, p99 under 500 ms for reads. Usage:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/nbcloud_bench_load \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/15 \\
        .venv/bin/python bench/load.py [--users 200] [--duration 300] [--websockets 50]
"""

import argparse
import itertools
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import gevent
import locust  # noqa: F401  (patches the standard library for gevent before the others load)
import requests
import websocket
from locust import User, between, events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import STATE_SPAWNING

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BARE = "GET /bench/bare/"
READ_P99_GOAL_MS = 500
_getaddrinfo = socket.getaddrinfo


def _resolve_localhost_subdomains(host, *args, **kwargs):
    """`*.localhost` is loopback (RFC 6761): each notebook's origin is `<id>.localhost:<port>`."""
    if isinstance(host, str) and host.lower().rstrip(".").endswith(".localhost"):
        host = "127.0.0.1"
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _resolve_localhost_subdomains

# What the clients share, filled in by main() before they start.
PROJECTS: list[dict] = []  # {"name", "token", "seeds": [notebook ids]}
KERNEL_NOTEBOOKS: list[dict] = []  # {"url", "token"}
_next_project = itertools.count()
_next_kernel = itertools.count()
STATUSES: dict[str, Counter] = defaultdict(Counter)  # endpoint -> status (or "error") -> count
KERNELS_OPEN = Counter()

# The spec of the notebooks the API clients create, stop and delete.
CHURN_SPEC = {
    "name": "churn",
    "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
    "resources": {"cpu": 1},
    "labels": {"bench": "churn"},
}

# Run by `manage.py shell -c`: one operator token for each project in LOAD_PROJECTS.
TOKENS = (
    "import io, json, os\n"
    "from django.core.management import call_command\n"
    "tokens = []\n"
    "for name in os.environ['LOAD_PROJECTS'].split(','):\n"
    "    out = io.StringIO()\n"
    "    call_command('createapitoken', name, project=name, stdout=out)\n"
    "    tokens.append(out.getvalue().strip())\n"
    "print(json.dumps(tokens))\n"
)


@events.request.add_listener
def _count_status(name, response=None, exception=None, context=None, **_):
    code = getattr(response, "status_code", None) or (context or {}).get("status")
    STATUSES[name][str(code) if code else "error"] += 1


class ApiClient(FastHttpUser):
    """A script or a person using the REST API of one project."""

    wait_time = between(1, 3)

    def on_start(self):
        project = PROJECTS[next(_next_project) % len(PROJECTS)]
        self.api = f"/api/v1/projects/{project['name']}/"
        self.seeds = project["seeds"]
        self.auth = {"Authorization": f"Bearer {project['token']}"}

    def _get(self, path: str, name: str):
        return self.client.get(path, headers=self.auth, name=name)

    @task(10)
    def bare(self):
        self._get("/bench/bare/", BARE)

    @task(10)
    def list_notebooks(self):
        self._get(f"{self.api}notebooks/", "GET /projects/{p}/notebooks/")

    @task(10)
    def get_notebook(self):
        notebook = random.choice(self.seeds)
        self._get(f"{self.api}notebooks/{notebook}/", "GET /projects/{p}/notebooks/{id}/")

    @task(3)
    def events(self):
        notebook = random.choice(self.seeds)
        self._get(
            f"{self.api}notebooks/{notebook}/events/", "GET /projects/{p}/notebooks/{id}/events/"
        )

    @task(3)
    def project(self):
        self._get(self.api, "GET /projects/{p}/")

    @task(2)
    def quota(self):
        self._get(f"{self.api}quota/", "GET /projects/{p}/quota/")

    @task(2)
    def flavors(self):
        self._get("/api/v1/capabilities/flavors/", "GET /capabilities/flavors/")

    @task(2)
    def create_stop_delete(self):
        created = self.client.post(
            f"{self.api}notebooks/",
            json=CHURN_SPEC,
            headers=self.auth,
            name="POST /projects/{p}/notebooks/",
        )
        if created.status_code != 201:
            return
        notebook = f"{self.api}notebooks/{created.json()['id']}/"
        self.client.post(
            f"{notebook}stop/", headers=self.auth, name="POST /projects/{p}/notebooks/{id}/stop/"
        )
        self.client.delete(notebook, headers=self.auth, name="DELETE /projects/{p}/notebooks/{id}/")


class KernelClient(User):
    """A JupyterLab user: a kernel of a running notebook, through the gateway, run every few s."""

    wait_time = between(2, 5)
    fixed_count = 0  # set from --websockets

    def _record(self, kind: str, name: str, started: float, status=None, exception=None):
        self.environment.events.request.fire(
            request_type=kind,
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=exception,
            context={"status": status},
        )

    def on_start(self):
        notebook = KERNEL_NOTEBOOKS[next(_next_kernel) % len(KERNEL_NOTEBOOKS)]
        self.base = notebook["url"]
        self.auth = {"Authorization": f"Bearer {notebook['token']}"}
        self.http = requests.Session()
        self.ws = None
        started = time.perf_counter()
        try:
            reply = self.http.post(
                f"{self.base}api/kernels", headers=self.auth, json={}, timeout=60
            )
            reply.raise_for_status()
        except requests.RequestException as exc:
            status = getattr(exc.response, "status_code", None)
            self._record("POST", "gateway: POST api/kernels", started, status, exc)
            raise StopUser() from exc
        self._record("POST", "gateway: POST api/kernels", started, reply.status_code)
        self.kernel = reply.json()["id"]
        url = self.base.replace("http", "ws", 1) + f"api/kernels/{self.kernel}/channels"
        started = time.perf_counter()
        try:
            self.ws = websocket.create_connection(
                url, header=self.auth, timeout=60, enable_multithread=False
            )
        except (websocket.WebSocketException, OSError) as exc:
            status = getattr(exc, "status_code", None)
            self._record("WS", "gateway: WebSocket open", started, status, exc)
            raise StopUser() from exc
        self._record("WS", "gateway: WebSocket open", started, 101)
        KERNELS_OPEN["open"] += 1

    @task
    def execute(self):
        msg_id = uuid.uuid4().hex
        message = {
            "header": {
                "msg_id": msg_id,
                "msg_type": "execute_request",
                "username": "load",
                "session": msg_id,
                "version": "5.3",
            },
            "parent_header": {},
            "metadata": {},
            "channel": "shell",
            "buffers": [],
            "content": {
                "code": "1 + 1",
                "silent": False,
                "store_history": False,
                "user_expressions": {},
                "allow_stdin": False,
            },
        }
        started = time.perf_counter()
        try:
            self.ws.send(json.dumps(message))
            while True:
                reply = json.loads(self.ws.recv())
                if (
                    reply.get("msg_type") == "execute_reply"
                    and reply.get("parent_header", {}).get("msg_id") == msg_id
                ):
                    break
        except (websocket.WebSocketException, OSError) as exc:
            self._record("WS", "gateway: kernel execute", started, None, exc)
            raise StopUser() from exc
        ok = reply["content"].get("status") == "ok"
        self._record(
            "WS",
            "gateway: kernel execute",
            started,
            "ok" if ok else "kernel-error",
            None if ok else RuntimeError(reply["content"]),
        )

    def on_stop(self):
        if self.ws is not None:
            self.ws.close()
            self.http.delete(f"{self.base}api/kernels/{self.kernel}", headers=self.auth, timeout=30)
            KERNELS_OPEN["open"] -= 1


# The platform.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def fresh_database(url: str) -> None:
    import psycopg
    from psycopg import sql

    base, name = url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def empty_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


class Platform:
    """Web (uvicorn, N workers), a control + host worker and beat, on PostgreSQL and Redis."""

    def __init__(self, data_dir: Path, web_workers: int, host_cpus: int):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.host = "bench-load"
        self.env = {
            **os.environ,
            "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}",
            "NBCLOUD_DATA_DIR": str(data_dir),
            "SECRET_KEY": uuid.uuid4().hex * 2,
            "NBCLOUD_PUBLIC_URL": self.url,
            "NBCLOUD_HOST_NAME": self.host,
            "NBCLOUD_HOST_CPUS": str(host_cpus),
            # A second platform on this machine (the tests' beside it): sandbox uids and
            # notebook addresses of its own (docs/settings.md).
            "NBCLOUD_SANDBOX_UID_BASE": "2200000000",
            "NBCLOUD_SANDBOX_UID_COUNT": "60000",
            "NBCLOUD_NOTEBOOK_ADDRESSES": "100.126.0.0/16",
        }
        self.web_workers = web_workers
        self.procs: list[subprocess.Popen] = []

    def manage(self, *args: str, env: dict | None = None) -> str:
        done = subprocess.run(
            [PY, str(ROOT / "manage.py"), *args],
            env={**self.env, **(env or {})},
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if done.returncode:
            sys.exit(f"manage.py {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def _start(self, name: str, argv: list[str], env: dict, ready) -> None:
        log_path = self.data_dir / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        deadline = time.monotonic() + 120
        while not ready(log_path.read_bytes()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)

    def start(self) -> None:
        bin_dir = Path(PY).parent
        web_env = {**self.env, "DJANGO_SETTINGS_MODULE": "bench.load_settings"}
        self._start(
            "web",
            [
                str(bin_dir / "uvicorn"),
                "nbcloud.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.web_workers),
                "--no-access-log",
            ],
            web_env,
            lambda out: b"Uvicorn running" in out,
        )
        self._start(
            "worker",
            [
                str(bin_dir / "celery"),
                "-A",
                "workers",
                "worker",
                "-Q",
                f"control,billing,host.{self.host}",
                "-c",
                "2",
                "-n",
                f"{self.host}@%h",
                "--loglevel",
                "INFO",
            ],
            self.env,
            lambda out: b"ready." in out,
        )
        self._start(
            "beat",
            [
                str(bin_dir / "celery"),
                "-A",
                "nbcloud",
                "beat",
                "--schedule",
                str(self.data_dir / "celerybeat-schedule"),
                "--loglevel",
                "INFO",
            ],
            self.env,
            lambda out: b"beat: Starting" in out,
        )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def api_call(method: str, url: str, token: str, **kwargs) -> dict:
    reply = requests.request(
        method, url, headers={"Authorization": f"Bearer {token}"}, timeout=60, **kwargs
    )
    if reply.status_code >= 300:
        raise RuntimeError(f"{method} {url}: {reply.status_code} {reply.text[:500]}")
    return reply.json()


def notebook_state(url: str, token: str) -> dict:
    return api_call("GET", url, token)["status"]


def set_up(platform: Platform, args) -> None:
    names = [f"load-{i}" for i in range(args.projects)]
    tokens = json.loads(
        platform.manage("shell", "-v0", "-c", TOKENS, env={"LOAD_PROJECTS": ",".join(names)})
    )
    projects = [
        {"name": n, "token": t, "seeds": [], "api": f"{platform.url}/api/v1/projects/{n}/"}
        for n, t in zip(names, tokens, strict=True)
    ]
    # The running notebooks first: they fill the host, so that what follows waits QUEUED.
    running = []
    for i in range(args.kernel_notebooks):
        project = projects[i % len(projects)]
        spec = {**CHURN_SPEC, "name": f"kernels-{i}", "labels": {"bench": "kernels"}}
        created = api_call("POST", f"{project['api']}notebooks/", project["token"], json=spec)
        running.append((f"{project['api']}notebooks/{created['id']}/", project["token"]))
    for url, token in running:
        status = wait(
            lambda url=url, token=token: (
                (s := notebook_state(url, token))["state"] in ("RUNNING", "FAILED") and s
            ),
            timeout=300,
            what=f"{url} to run",
        )
        if status["state"] != "RUNNING":
            raise RuntimeError(f"{url} did not start: {status['info']}")
        KERNEL_NOTEBOOKS.append({"url": status["url"], "token": token, "api": url})
    for project in projects:
        for k in range(args.seed):
            spec = {**CHURN_SPEC, "name": f"seed-{k}", "labels": {"bench": "seed", "k": str(k)}}
            created = api_call("POST", f"{project['api']}notebooks/", project["token"], json=spec)
            api_call("POST", f"{project['api']}notebooks/{created['id']}/stop/", project["token"])
            project["seeds"].append(created["id"])
    PROJECTS.extend(projects)


def churned(project: dict) -> list[dict]:
    url = f"{project['api']}notebooks/?label_selector=bench=churn&size=1000"
    return api_call("GET", url, project["token"])["results"]


def clean_up() -> None:
    """Delete what the clients left (a create cut short by the end of the run), then stop
    the running notebooks: no editor may outlive the platform. In this order, or a
    left QUEUED notebook would start on the capacity the stops release."""
    for project in PROJECTS:
        for notebook in churned(project):
            if notebook["status"]["state"] not in ("DELETING", "DELETED"):
                api_call("DELETE", f"{project['api']}notebooks/{notebook['id']}/", project["token"])
    for project in PROJECTS:
        wait(lambda p=project: not churned(p), timeout=120, what=f"{project['name']}'s deletes")
    for notebook in KERNEL_NOTEBOOKS:
        api_call("POST", f"{notebook['api']}stop/", notebook["token"])
    for notebook in KERNEL_NOTEBOOKS:
        wait(
            lambda n=notebook: (
                notebook_state(n["api"], n["token"])["state"] in ("STOPPED", "FAILED")
            ),
            timeout=300,
            what=f"{notebook['api']} to stop",
        )


# The run and its report.


def run_load(args) -> Environment:
    KernelClient.fixed_count = args.websockets
    clients = [ApiClient, KernelClient] if args.websockets else [ApiClient]
    env = Environment(user_classes=clients, events=events)
    env.host = args.host_url
    runner = env.create_local_runner()
    total = args.users + args.websockets
    runner.start(total, spawn_rate=args.spawn_rate)
    gevent.sleep(1)
    while runner.state == STATE_SPAWNING:
        gevent.sleep(0.5)
    # The kernels open in their clients' on_start: measure once they are open.
    deadline = time.monotonic() + 120
    while KERNELS_OPEN["open"] < args.websockets and time.monotonic() < deadline:
        gevent.sleep(0.5)
    print(f"{runner.user_count} clients running, {KERNELS_OPEN['open']} kernels open", flush=True)
    env.stats.reset_all()
    STATUSES.clear()
    load_before = os.getloadavg()
    gevent.sleep(args.duration)
    report = collect(env, args, load_before)
    runner.quit()
    env.report = report
    return env


def collect(env: Environment, args, load_before) -> dict:
    entries = sorted(
        (e for e in env.stats.entries.values() if e.num_requests),
        key=lambda e: (e.name != BARE, e.name),
    )
    bare = env.stats.entries.get((BARE, "GET"))
    bare_p50 = bare.get_response_time_percentile(0.5) if bare else None
    bare_p99 = bare.get_response_time_percentile(0.99) if bare else None
    rows = []
    for e in entries:
        p50, p99 = e.get_response_time_percentile(0.5), e.get_response_time_percentile(0.99)
        statuses = dict(STATUSES.get(e.name, {}))
        rows.append(
            {
                "endpoint": e.name,
                "kind": e.method,
                "requests": e.num_requests,
                "rps": e.num_requests / args.duration,
                "failures": e.num_failures,
                "statuses": statuses,
                "5xx": sum(n for s, n in statuses.items() if s.isdigit() and int(s) >= 500),
                "p50_ms": p50,
                "p99_ms": p99,
                "p50_vs_bare": p50 / bare_p50 if bare_p50 else None,
                "p99_vs_bare": p99 / bare_p99 if bare_p99 else None,
            }
        )
    reads = [r for r in rows if r["kind"] == "GET" and r["endpoint"] != BARE]
    total = env.stats.total
    return {
        "users": args.users,
        "websockets": args.websockets,
        "duration_s": args.duration,
        "web_workers": args.web_workers,
        "projects": args.projects,
        "seed_notebooks_per_project": args.seed,
        "kernel_notebooks": args.kernel_notebooks,
        "requests": total.num_requests,
        "rps": total.num_requests / args.duration,
        "failures": total.num_failures,
        "5xx": sum(r["5xx"] for r in rows),
        "max_read_p99_ms": max((r["p99_ms"] for r in reads), default=None),
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "endpoints": rows,
        "errors": [
            {"endpoint": e.name, "error": str(e.error)[:300], "count": e.occurrences}
            for e in env.stats.errors.values()
        ],
    }


def print_report(report: dict) -> None:
    print(
        f"\n{report['users']} API clients + {report['websockets']} kernel WebSockets, "
        f"{report['duration_s']} s, {report['requests']} requests ({report['rps']:.1f}/s), "
        f"{report['web_workers']} web workers"
    )
    header = f"{'endpoint':44s} {'reqs':>7s} {'p50 ms':>7s} {'p99 ms':>7s} {'p50/bare':>8s} {'p99/bare':>8s}  statuses"
    print(header)
    for r in report["endpoints"]:
        ratio = lambda v: f"{v:8.2f}" if v else f"{'':8s}"  # noqa: E731
        statuses = " ".join(f"{s}:{n}" for s, n in sorted(r["statuses"].items()))
        print(
            f"{r['endpoint']:44s} {r['requests']:7d} {r['p50_ms']:7.0f} {r['p99_ms']:7.0f} "
            f"{ratio(r['p50_vs_bare'])} {ratio(r['p99_vs_bare'])}  {statuses}"
        )
    for error in report["errors"]:
        print(f"  error x{error['count']} {error['endpoint']}: {error['error']}")
    print(f"5xx: {report['5xx']} (goal 0): {'met' if report['5xx'] == 0 else 'NOT met'}")
    p99 = report["max_read_p99_ms"]
    print(
        f"slowest read p99: {p99:.0f} ms (goal < {READ_P99_GOAL_MS} ms): "
        f"{'met' if p99 is not None and p99 < READ_P99_GOAL_MS else 'NOT met'}"
    )


def main() -> None:
    cpus = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--users", type=int, default=200, help="API clients")
    parser.add_argument("--duration", type=int, default=300, help="seconds of measurement")
    parser.add_argument("--websockets", type=int, default=50, help="kernel WebSocket clients")
    parser.add_argument("--kernel-notebooks", type=int, default=2, help="running notebooks")
    parser.add_argument("--projects", type=int, default=10)
    parser.add_argument("--seed", type=int, default=20, help="stopped notebooks per project")
    parser.add_argument("--web-workers", type=int, default=2 * cpus + 1, help="uvicorn workers")
    parser.add_argument("--spawn-rate", type=float, default=10, help="clients started per second")
    args = parser.parse_args()
    if args.kernel_notebooks < 1:
        parser.error("--kernel-notebooks: at least 1 (the host offers only their CPUs)")

    database = os.environ.get("DATABASE_URL", "")
    broker = os.environ.get("CELERY_BROKER_URL", "")
    if not database.startswith("postgres") or not broker.startswith("redis://"):
        sys.exit(
            "bench/load.py runs on PostgreSQL and Redis of its own: set "
            "DATABASE_URL=postgres://.../<database> and CELERY_BROKER_URL=redis://.../<db>"
        )
    fresh_database(database)
    empty_redis(broker)
    data_dir = ROOT / "var" / "bench-load"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    platform = Platform(data_dir, args.web_workers, host_cpus=args.kernel_notebooks)
    args.host_url = platform.url
    platform.manage("migrate", "--noinput", "-v0")
    try:
        platform.start()
        wait(lambda: requests.get(f"{platform.url}/bench/bare/", timeout=5).status_code, 60, "web")
        set_up(platform, args)
        print(
            f"platform at {platform.url}: {len(PROJECTS)} projects, {args.seed} stopped "
            f"notebooks each, {len(KERNEL_NOTEBOOKS)} running",
            flush=True,
        )
        report = run_load(args).report
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        (out / "load.json").write_text(json.dumps(report, indent=2))
        print_report(report)
    finally:
        try:
            clean_up()
        finally:
            platform.stop()


if __name__ == "__main__":
    main()
