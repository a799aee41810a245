"""Seconds from POST to RUNNING, beside a bare JupyterLab start.

Runs the platform as `make run` does (runplatform: web, worker, embedded
broker) in its own data directory, then, interleaved N times:
  - platform: POST a notebook, poll GET until RUNNING (and stop it, timing
    stop -> STOPPED, which includes the workspace backup), delete it;
  - baseline: start the same environment's JupyterLab directly (no platform,
    no sandbox) and poll its /api/status until it answers.
Prints medians and the ratio platform / baseline. Usage:

    .venv/bin/python bench/start_latency.py [--runs 5]
"""

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(predicate, timeout=120, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError


def ok(url, **kw) -> bool:
    try:
        return requests.get(url, timeout=2, **kw).status_code == 200
    except requests.RequestException:
        return False


def bare_jupyter(env_dir: Path) -> float:
    workdir = Path(tempfile.mkdtemp(prefix="nbc-bench-"))
    port, token = free_port(), uuid.uuid4().hex
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            str(env_dir / "bin" / "python"),
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            f"--ServerApp.root_dir={workdir}",
        ],
        env={**os.environ, "JUPYTER_TOKEN": token, "HOME": str(workdir)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait(
            lambda: ok(
                f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"}
            )
        )
        return time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def running_platform(name: str, **env_vars: str) -> Iterator[tuple[str, dict]]:
    """The platform as `make run` runs it, in var/<name>; yields (notebooks URL, headers)."""
    data_dir = ROOT / "var" / name
    shutil.rmtree(data_dir, ignore_errors=True)
    env = {**os.environ, "NBCLOUD_DATA_DIR": str(data_dir), **env_vars}
    env.pop("CELERY_BROKER_URL", None)
    env.pop("DATABASE_URL", None)
    manage = [PY, str(ROOT / "manage.py")]
    subprocess.run([*manage, "setup", "-v0"], env=env, check=True, cwd=ROOT)
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, cwd=ROOT)
    token = subprocess.run(
        [*manage, "createapitoken", "bench", "--project", "bench"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout.strip()
    port = free_port()
    platform = subprocess.Popen(
        [*manage, "runplatform", "--port", str(port), "--no-beat", "--no-flower"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api/v1/projects/bench/notebooks/"
    headers = {"Authorization": f"Bearer {token}"}
    sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]
    os.environ.update(
        {"NBCLOUD_DATA_DIR": str(data_dir), "DJANGO_SETTINGS_MODULE": "nbcloud.settings"}
    )
    import django

    django.setup()
    try:
        wait(lambda: ok(api, headers=headers), timeout=180)  # a loaded machine starts slowly
        yield api, headers
    finally:
        platform.terminate()
        platform.wait(60)


def notebook_round(api: str, headers: dict, name: str) -> tuple[float, float]:
    """POST a conda + JupyterLab notebook: seconds to RUNNING, then stop to STOPPED."""
    spec = {
        "name": name,
        "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
        "resources": {"cpu": 1},
    }
    started = time.monotonic()
    created = requests.post(api, json=spec, headers=headers, timeout=10).json()
    url = f"{api}{created['id']}/"

    def state_is(state):
        body = requests.get(url, headers=headers, timeout=10).json()
        if body["status"]["state"] == "FAILED":
            raise RuntimeError(body["status"])
        return body["status"]["state"] == state

    wait(lambda: state_is("RUNNING"))
    start_s = time.monotonic() - started
    stopping = time.monotonic()
    requests.post(url + "stop/", headers=headers, timeout=10)
    wait(lambda: state_is("STOPPED"))
    stop_s = time.monotonic() - stopping
    requests.delete(url, headers=headers, timeout=10)
    return start_s, stop_s


def report(name: str, runs: int, results: dict[str, list[float]], platform: str, bare: str):
    """Print and write (bench/results/<name>.json) the medians and platform / bare."""
    medians = {k: statistics.median(v) for k, v in results.items()}
    ratio = medians[platform] / medians[bare]
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    summary = {"runs": runs, "samples": results, "medians": medians, "start_ratio": ratio}
    (out / f"{name}.json").write_text(json.dumps(summary, indent=2))
    print(f"runs: {runs}")
    for key, value in medians.items():
        print(f"median {key:24s} {value:6.2f} s   samples {[round(v, 2) for v in results[key]]}")
    print(f"start ratio {platform} / {bare}: {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    results = {"platform_start_s": [], "platform_stop_s": [], "bare_jupyter_start_s": []}
    with running_platform("bench") as (api, headers):
        from workers.environments import env_dir

        conda = env_dir("conda", "py311")
        for i in range(args.runs):
            start_s, stop_s = notebook_round(api, headers, f"bench-{i}")
            results["platform_start_s"].append(start_s)
            results["platform_stop_s"].append(stop_s)
            results["bare_jupyter_start_s"].append(bare_jupyter(conda))
    report("start_latency", args.runs, results, "platform_start_s", "bare_jupyter_start_s")


if __name__ == "__main__":
    main()
