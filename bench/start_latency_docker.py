"""Seconds from POST to RUNNING on the docker runtime, beside a bare `docker run`.

Runs the platform as `make run` does, with NBCLOUD_RUNTIME=docker, in its own data
directory, then, interleaved N times:
  - platform: POST a conda + JupyterLab notebook, poll GET until RUNNING (and stop
    it, timing stop -> STOPPED), delete it;
  - baseline: `docker run` of the same image (nbcloud/conda:py311) by hand, with the
    bare editor on the host's network, and poll its /api/status until it answers.
Prints medians and the ratio platform / baseline. Needs dockerd and the image
(make docker-images). Usage:

    .venv/bin/python bench/start_latency_docker.py [--runs 10]
"""

import argparse
import os
import subprocess
import tempfile
import time
import uuid

from start_latency import free_port, notebook_round, ok, report, running_platform, wait

IMAGE_UID = 1000


def bare_docker_run(image: str) -> float:
    port, token = free_port(), uuid.uuid4().hex
    name = f"nbcloud-bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="nbc-bench-") as workdir:
        os.chown(workdir, IMAGE_UID, IMAGE_UID)  # the image's nbuser
        started = time.monotonic()
        subprocess.run(
            [
                "docker",
                "run",
                "-d",
                "--name",
                name,
                "--network",
                "host",
                "-e",
                f"JUPYTER_TOKEN={token}",
                "-v",
                f"{workdir}:/workspace",
                image,
                "jupyter",
                "lab",
                "--no-browser",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={port}",
                "--ServerApp.root_dir=/workspace",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        try:
            wait(
                lambda: ok(
                    f"http://127.0.0.1:{port}/api/status",
                    headers={"Authorization": f"token {token}"},
                )
            )
            return time.monotonic() - started
        finally:
            subprocess.run(["docker", "rm", "-f", name], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()

    results = {"platform_start_s": [], "platform_stop_s": [], "bare_docker_run_s": []}
    with running_platform("bench-docker", NBCLOUD_RUNTIME="docker") as (api, headers):
        from workers.environments import resolve

        image = resolve("conda")[1].image
        for i in range(args.runs):
            start_s, stop_s = notebook_round(api, headers, f"bench-{i}")
            results["platform_start_s"].append(start_s)
            results["platform_stop_s"].append(stop_s)
            results["bare_docker_run_s"].append(bare_docker_run(image))
    report("start_latency_docker", args.runs, results, "platform_start_s", "bare_docker_run_s")


if __name__ == "__main__":
    main()
