"""The slurm runtime: seconds from POST to the first kernel output, beside `sbatch`
of the same bare JupyterLab by hand.

Runs the platform as `make run` does (runplatform, SQLite, embedded broker) with
NBCLOUD_RUNTIME=slurm in var/bench-slurm/, against a Slurm cluster: the one of
SLURM_CONF when set, else a one-node cluster started here (tests/support/slurm.py;
root, slurm-wlm and munge). Then, interleaved N times:
  - platform: POST a conda + JupyterLab notebook, poll until RUNNING, open a
    kernel through the gateway and run `print(42)`: the time to its output;
    then stop it (STOPPED) and delete it;
  - baseline: `sbatch --wrap "jupyter lab ..."` of the same environment, by hand
    (no platform, no sandbox), poll its /api/status, open a kernel directly and
    run `print(42)`: the time to its output; then scancel.
Prints medians and the ratio platform / baseline. Usage:

    .venv/bin/python bench/slurm.py [--runs 5]
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

sys.path[:0] = [
    str(Path(__file__).resolve().parent),
    str(Path(__file__).resolve().parent.parent / "tests"),
]

from start_latency import free_port, ok, report, running_platform, wait  # noqa: E402

from support import slurm  # noqa: E402
from support.editors import Kernel  # noqa: E402

_getaddrinfo = socket.getaddrinfo


def _resolve_localhost_subdomains(host, *args, **kwargs):
    """`*.localhost` is loopback (RFC 6761): each notebook's origin is `<id>.localhost:<port>`."""
    if isinstance(host, str) and host.lower().rstrip(".").endswith(".localhost"):
        host = "127.0.0.1"
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _resolve_localhost_subdomains


def first_output(base_url: str, headers: dict) -> None:
    kernel = Kernel(base_url, headers)
    try:
        assert kernel.execute("print(42)").strip() == "42"
    finally:
        kernel.close()


def platform_round(api: str, headers: dict, name: str) -> float:
    spec = {
        "name": name,
        "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
        "resources": {"cpu": 1},
    }
    started = time.monotonic()
    created = requests.post(api, json=spec, headers=headers, timeout=10).json()
    url = f"{api}{created['id']}/"

    def running():
        status = requests.get(url, headers=headers, timeout=10).json()["status"]
        if status["state"] == "FAILED":
            raise RuntimeError(status)
        return status["url"] if status["state"] == "RUNNING" else None

    first_output(wait(running), headers)
    elapsed = time.monotonic() - started
    requests.post(url + "stop/", headers=headers, timeout=10)
    wait(
        lambda: (
            requests.get(url, headers=headers, timeout=10).json()["status"]["state"] == "STOPPED"
        )
    )
    requests.delete(url, headers=headers, timeout=10)
    return elapsed


def sbatch_round(env_dir: Path) -> float:
    """The same JupyterLab as a Slurm job submitted by hand, no sandbox."""
    workdir = Path(tempfile.mkdtemp(prefix="nbc-bench-slurm-"))
    port, token = free_port(), uuid.uuid4().hex
    command = (
        f"exec {env_dir}/bin/python -m jupyter lab --no-browser --allow-root "
        f"--ServerApp.ip=127.0.0.1 --ServerApp.port={port} --ServerApp.root_dir={workdir}"
    )
    started = time.monotonic()
    job = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--cpus-per-task=1",
            "--mem=1G",
            "--output=/dev/null",
            "--wrap",
            command,
        ],
        env={**os.environ, "JUPYTER_TOKEN": token, "HOME": str(workdir)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        headers = {"Authorization": f"token {token}"}
        base = f"http://127.0.0.1:{port}/"
        wait(lambda: ok(base + "api/status", headers=headers))
        first_output(base, headers)
        return time.monotonic() - started
    finally:
        subprocess.run(["scancel", job], check=False)


def node_idle() -> None:
    """Each round starts on an idle node: no job of the last round still ending
    (Slurm's KillWait), which would keep the next one pending."""
    wait(
        lambda: not subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip()
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    cluster = None
    if not os.environ.get("SLURM_CONF"):
        reason = slurm.missing()
        if reason:
            sys.exit(f"no Slurm cluster: {reason}")
        cluster = slurm.start(Path(tempfile.mkdtemp(prefix="nbcloud-bench-slurm-")))
    results = {"platform_first_output_s": [], "sbatch_first_output_s": []}
    try:
        with running_platform("bench-slurm", NBCLOUD_RUNTIME="slurm") as (api, headers):
            from workers.environments import env_dir

            conda = env_dir("conda", "py311")
            for i in range(args.runs):
                node_idle()
                results["platform_first_output_s"].append(platform_round(api, headers, f"b{i}"))
                node_idle()
                results["sbatch_first_output_s"].append(sbatch_round(conda))
    finally:
        if cluster is not None:
            slurm.stop(cluster)
    report("slurm", args.runs, results, "platform_first_output_s", "sbatch_first_output_s")


if __name__ == "__main__":
    main()
