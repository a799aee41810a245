"""Workspace save (stop) and restore (start) on S3, beside a plain tar through boto3.

Two workspaces: 1 GiB in 10,000 files, and one 1 GiB file (random bytes, so
compression cannot flatter the numbers). Against a moto_server on loopback,
in the same run:

- nbcloud: `workers.workspace.backup` (what a stop does once the editor is
  down: stream a tar.gz through a checksum into a multipart upload, record
  the backup, apply retention) and `workers.workspace.prepare` on a host
  without the workspace (what a start does: stream the latest backup back,
  verify the checksum, extract beside the final place, move it in, chown);
- baseline: `tar -c | boto3 upload_fileobj` and `boto3 download_fileobj | tar -x`
  with the same part size and concurrency.

Reports medians of --runs, the ratio nbcloud / baseline, and the peak RSS of
this process (and its children) during each phase. Usage:

    .venv/bin/python bench/workspace_s3.py [--runs 3] [--size-mib 1024] [--files 10000]
"""

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "var" / "bench-workspace"
BUCKET = "bench"
KEYS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}


class PeakRss:
    """Samples this process's RSS (children included, the object store not) while the block runs."""

    exclude: set[int] = set()

    def __enter__(self):
        self.base = psutil.Process().memory_info().rss
        self.peak, self.running = 0, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        me = psutil.Process()
        while self.running:
            rss = me.memory_info().rss
            for child in me.children(recursive=True):
                if child.pid in self.exclude:
                    continue
                with contextlib.suppress(psutil.Error):
                    rss += child.memory_info().rss
            self.peak = max(self.peak, rss)
            time.sleep(0.02)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


def start_moto() -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


def make_workspaces(size: int, files: int) -> dict[str, Path]:
    many, one = WORK / "src-many", WORK / "src-one"
    if not many.exists():
        tmp = many.with_name("tmp-many")
        shutil.rmtree(tmp, ignore_errors=True)
        per_file = size // files
        for i in range(files):
            folder = tmp / f"d{i // 100:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"f{i:05d}.bin").write_bytes(os.urandom(per_file))
        tmp.rename(many)
    if not one.exists():
        tmp = one.with_name("tmp-one")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with open(tmp / "model.bin", "wb") as f:
            for _ in range(size // (64 * 1024 * 1024)):
                f.write(os.urandom(64 * 1024 * 1024))
        tmp.rename(one)
    return {f"{files:,} files": many, "one file": one}


def baseline_save(client, config, source: Path, key: str) -> None:
    tar = subprocess.Popen(["tar", "-c", "-C", str(source), "."], stdout=subprocess.PIPE)
    client.upload_fileobj(tar.stdout, BUCKET, key, Config=config)
    if tar.wait():
        raise RuntimeError("tar failed")


def baseline_restore(client, config, key: str, target: Path) -> None:
    target.mkdir(parents=True)
    tar = subprocess.Popen(["tar", "-x", "-C", str(target)], stdin=subprocess.PIPE)
    client.download_fileobj(BUCKET, key, tar.stdin, Config=config)
    tar.stdin.close()
    if tar.wait():
        raise RuntimeError("tar failed")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()

    moto, endpoint = start_moto()
    PeakRss.exclude = {moto.pid}
    data_dir = WORK / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    os.environ.pop("DATABASE_URL", None)  # SQLite in the data dir
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "nbcloud.settings",
            "NBCLOUD_DATA_DIR": str(data_dir),
            "NBCLOUD_BACKUP_STORAGE": "s3",
            "NBCLOUD_S3_BUCKET": BUCKET,
            "NBCLOUD_S3_ENDPOINT_URL": endpoint,
            "NBCLOUD_S3_REGION": "us-east-1",
            "NBCLOUD_S3_ACCESS_KEY": "bench",
            "NBCLOUD_S3_SECRET_KEY": "bench",
            "NBCLOUD_BACKUP_RETENTION": "1",
        }
    )
    sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]
    import django

    django.setup()
    import boto3
    from boto3.s3.transfer import TransferConfig
    from django.conf import settings
    from django.core.management import call_command

    from nbcloud.datadir import prepare
    from nbcloud.notebooks.models import Notebook
    from nbcloud.projects.models import Project
    from workers import workspace

    prepare()
    call_command("migrate", verbosity=0)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **KEYS)
    client.create_bucket(Bucket=BUCKET)
    config = TransferConfig(
        multipart_threshold=settings.NBCLOUD_S3_PART_SIZE,
        multipart_chunksize=settings.NBCLOUD_S3_PART_SIZE,
        max_concurrency=settings.NBCLOUD_S3_CONCURRENCY,
    )
    project = Project.objects.create(name="bench")
    results = {}
    try:
        for label, source in make_workspaces(args.size_mib * 1024 * 1024, args.files).items():
            notebook = Notebook.objects.create(
                project=project,
                name="bench",
                framework_id="conda",
                framework_version="py311",
                editor_id="jupyterlab",
                flavor="ai1-1-cpu",
                cpu=1,
                region="GRA",
            )
            times = {k: [] for k in ("save", "save_base", "restore", "restore_base")}
            peaks = {k: 0 for k in times}
            grew = {k: 0 for k in times}
            for _ in range(args.runs):
                # nbcloud: the workspace is `source` itself (a host that has it).
                settings.NBCLOUD_WORKSPACES_DIR = source.parent / "ws-a"
                settings.NBCLOUD_WORKSPACES_DIR.mkdir(exist_ok=True)
                live = workspace.local_path(notebook)
                source.rename(live)
                try:
                    with PeakRss() as peak:
                        t0 = time.perf_counter()
                        workspace.backup(notebook)
                        times["save"].append(time.perf_counter() - t0)
                finally:
                    live.rename(source)
                peaks["save"] = max(peaks["save"], peak.peak)
                grew["save"] = max(grew["save"], peak.peak - peak.base)
                settings.NBCLOUD_WORKSPACES_DIR = source.parent / "ws-b"
                with PeakRss() as peak:
                    t0 = time.perf_counter()
                    workspace.prepare(notebook)
                    times["restore"].append(time.perf_counter() - t0)
                peaks["restore"] = max(peaks["restore"], peak.peak)
                grew["restore"] = max(grew["restore"], peak.peak - peak.base)
                shutil.rmtree(settings.NBCLOUD_WORKSPACES_DIR)

                with PeakRss() as peak:
                    t0 = time.perf_counter()
                    baseline_save(client, config, source, "baseline.tar")
                    times["save_base"].append(time.perf_counter() - t0)
                peaks["save_base"] = max(peaks["save_base"], peak.peak)
                grew["save_base"] = max(grew["save_base"], peak.peak - peak.base)
                target = source.parent / "ws-c"
                with PeakRss() as peak:
                    t0 = time.perf_counter()
                    baseline_restore(client, config, "baseline.tar", target)
                    times["restore_base"].append(time.perf_counter() - t0)
                peaks["restore_base"] = max(peaks["restore_base"], peak.peak)
                grew["restore_base"] = max(grew["restore_base"], peak.peak - peak.base)
                shutil.rmtree(target)
                client.delete_object(Bucket=BUCKET, Key="baseline.tar")
            med = {k: statistics.median(v) for k, v in times.items()}
            results[label] = {
                "median_s": med,
                "samples_s": times,
                "peak_rss_mib": {k: v / 2**20 for k, v in peaks.items()},
                "peak_growth_mib": {k: v / 2**20 for k, v in grew.items()},
                "ratio_save": med["save"] / med["save_base"],
                "ratio_restore": med["restore"] / med["restore_base"],
            }
            print(
                f"{label}: save {med['save']:.2f} s vs {med['save_base']:.2f} s "
                f"(x{results[label]['ratio_save']:.2f}), restore {med['restore']:.2f} s vs "
                f"{med['restore_base']:.2f} s (x{results[label]['ratio_restore']:.2f}); "
                "peak RSS MiB (growth) "
                + ", ".join(f"{k} {peaks[k] / 2**20:.0f} (+{grew[k] / 2**20:.0f})" for k in times),
                flush=True,
            )
    finally:
        moto.terminate()
        moto.wait()
    out = ROOT / "bench" / "results" / "workspace_s3.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
