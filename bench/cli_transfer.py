"""`nbc data upload/download` through presigned URLs, beside boto3 with the keys.

One file of --size-mib random bytes (default 200 MiB). The platform's web
process (uvicorn, SQLite under var/bench-cli) and a moto_server run on
loopback; in the same run, interleaved, --runs times:

- nbc: `nbc data upload` and `nbc data download` as a user runs them (the
  installed `nbc`, a process each: start-up, presign request, then one
  streamed PUT or GET straight to the object store);
- baseline: boto3's `upload_file` and `download_file` with the datastore's
  keys (what someone holding the keys would do: multipart, 10 threads).

Both talk to the same moto_server, so the ratio is what the CLI's way costs
(or saves) on the client side, not the speed of an object store. Reports
medians, MiB/s, the ratio nbc / boto3 and the peak RSS of the nbc process
(a whole file in memory would show as RSS above the file's size). Usage:

    .venv/bin/python bench/cli_transfer.py [--runs 5] [--size-mib 200]
"""

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
from start_latency import free_port, ok, wait
from workspace_s3 import start_moto

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "var" / "bench-cli"
BIN = Path(sys.executable).parent
BUCKET = "bench"


def timed_nbc(args: list[str], env: dict) -> tuple[float, float, int]:
    """Seconds, CPU seconds and peak RSS (bytes, sampled every 10 ms) of one `nbc` process."""
    started = time.monotonic()
    proc = subprocess.Popen([str(BIN / "nbc"), *args], env=env, stdout=subprocess.DEVNULL)
    watched, peak = psutil.Process(proc.pid), 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        with contextlib.suppress(psutil.Error):
            peak = max(peak, watched.memory_info().rss)
        time.sleep(0.01)
    seconds = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"nbc {' '.join(args)} exited {proc.returncode}")
    return seconds, usage.ru_utime + usage.ru_stime, peak


def timed(call) -> tuple[float, float]:
    """Seconds and CPU seconds (of this process, all its threads) of `call()`."""
    started, cpu = time.monotonic(), time.process_time()
    call()
    return time.monotonic() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size-mib", type=int, default=200)
    args = parser.parse_args()

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    env = {**os.environ, "NBCLOUD_DATA_DIR": str(WORK / "data")}
    for name in ("CELERY_BROKER_URL", "DATABASE_URL"):
        env.pop(name, None)
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "setup", "-v0"], env=env, check=True, cwd=ROOT)
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, cwd=ROOT)
    token = subprocess.run(
        [*manage, "createapitoken", "bench", "--project", "bench", "--role", "operator"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout.strip()

    import boto3

    moto, endpoint = start_moto()
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    s3.create_bucket(Bucket=BUCKET)
    port = free_port()
    web = subprocess.Popen(
        [str(BIN / "uvicorn"), "nbcloud.asgi:application", "--port", str(port)]
        + ["--app-dir", str(ROOT / "platform"), "--log-level", "warning"],
        env=env,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    cli_env = {
        **env,
        "NBC_URL": url,
        "NBC_TOKEN": token,
        "NBC_PROJECT": "bench",
        "NBC_CONFIG": str(WORK / "nbc.toml"),
        "NBC_SECRET_KEY": "bench",
    }
    source = WORK / "big.bin"
    with open(source, "wb") as f:
        for _ in range(args.size_mib):
            f.write(os.urandom(1024 * 1024))
    size = source.stat().st_size
    # {"nbc upload": {"s": [...], "cpu_s": [...], "rss": [...]}, "boto3 upload": ...}
    results: dict[str, dict[str, list[float]]] = {}

    def record(name: str, seconds: float, cpu: float, rss: int | None = None) -> None:
        row = results.setdefault(name, {"s": [], "cpu_s": [], "rss": []})
        row["s"].append(seconds)
        row["cpu_s"].append(cpu)
        if rss is not None:
            row["rss"].append(rss)

    try:
        auth = {"Authorization": f"Bearer {token}"}
        wait(lambda: ok(f"{url}/api/v1/capabilities/regions/", headers=auth), timeout=60)
        datastore = ["datastore", "add", "s3", "lake", "--endpoint", endpoint]
        timed_nbc([*datastore, "--region", "us-east-1", "--access-key", "bench"], cli_env)
        for run in range(args.runs):
            record("nbc start-up", *timed_nbc(["--version"], cli_env))
            upload = ["data", "upload", "lake", BUCKET, str(source), "--prefix", "nbc/"]
            record("nbc upload", *timed_nbc(upload, cli_env))
            record("boto3 upload", *timed(lambda: s3.upload_file(str(source), BUCKET, "b3/big")))
            into = WORK / f"down-{run}"
            download = ["data", "download", "lake", BUCKET, "nbc/big.bin", "--to", str(into)]
            record("nbc download", *timed_nbc(download, cli_env))
            if (into / "nbc" / "big.bin").stat().st_size != size:
                sys.exit("the download is not the file uploaded")
            shutil.rmtree(into)
            target = WORK / "boto3.bin"
            record(
                "boto3 download",
                *timed(lambda target=target: s3.download_file(BUCKET, "b3/big", str(target))),
            )
            target.unlink()
            print(
                f"run {run + 1}: "
                + ", ".join(f"{k} {v['s'][-1]:.2f} s" for k, v in results.items())
            )
    finally:
        web.terminate()
        moto.terminate()
        web.wait(30)
        moto.wait(30)

    mib = size / 1024**2
    summary: dict = {"size_mib": mib, "runs": args.runs, "samples": results}
    print(f"\n{mib:.0f} MiB file, medians of {args.runs} runs")
    print(f"{'':16}{'wall':>9}{'MiB/s':>7}{'CPU':>9}{'peak RSS':>10}")
    for name, row in results.items():
        wall, cpu = statistics.median(row["s"]), statistics.median(row["cpu_s"])
        rss = max(row["rss"]) / 1024**2 if row["rss"] else None
        summary[name] = {"s": wall, "cpu_s": cpu, "peak_rss_mib": rss}
        rate = f"{mib / wall:7.0f}" if "start" not in name else " " * 7
        print(f"{name:16}{wall:7.2f} s{rate}{cpu:7.2f} s" + (f"{rss:6.0f} MiB" if rss else ""))
    for phase in ("upload", "download"):
        ratio = summary[f"nbc {phase}"]["s"] / summary[f"boto3 {phase}"]["s"]
        summary[f"{phase} nbc / boto3"] = ratio
        print(f"{phase} nbc / boto3: {ratio:.2f}")
    out = ROOT / "bench" / "results" / "cli_transfer.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
