"""A notebook's network against the host's own, in one run: throughput and round trips.

Builds, in network namespaces this benchmark makes and removes, a "public" web
server at 198.51.100.2 (a documentation address, joined to the host by a veth
pair) serving a --size-mib file, then downloads it --runs times, interleaved:
  - baseline: from the host itself (curl in the host's namespace);
  - notebook: from inside a notebook's network namespace, as the notebook's
    uid, connected by pasta exactly as the sandbox connects an editor
    (workers/runtimes/network.py: the same veth pair, routes and nftables rules).
Then small request/reply round trips (what a kernel message costs on the wire):
from the host to an echo server inside the notebook's namespace, at the
notebook's address (the gateway's path to an editor), against the same server
on the host's own loopback (the path before notebooks had networks of their
own); --round-trips each, interleaved in blocks, p50 and p99.
Reports medians and the ratio notebook / host. Needs root, iproute2, nftables.

    .venv/bin/python bench/network.py [--size-mib 1024] [--runs 5]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nbcloud.settings")
os.environ.setdefault("NBCLOUD_DATA_DIR", str(ROOT / "var" / "bench-network"))

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

from nbcloud.datadir import prepare  # noqa: E402
from workers.runtimes import network  # noqa: E402


def ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


def download(prefix: list[str], url: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [*prefix, "curl", "-sS", "--fail", "-o", "/dev/null", url], check=True, timeout=600
    )
    return time.perf_counter() - started


ECHO = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := conn.recv(4096):
        conn.sendall(data)
    conn.close()
"""


def _timed_echo(address: str, port: int, count: int, samples: list) -> None:
    import socket

    with socket.create_connection((address, port), timeout=10) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        message = b"x" * 512
        for _ in range(count):
            started = time.perf_counter()
            conn.sendall(message)
            got = 0
            while got < len(message):
                got += len(conn.recv(4096))
            samples.append(time.perf_counter() - started)


def round_trips(inside: list[str], address: str, count: int) -> tuple[list, list]:
    """Echo round trips to the notebook's namespace and to the host's loopback,
    interleaved in blocks of 500 (one connection each, kept open, as a kernel's is)."""
    import socket

    host, notebook = [], []
    blocks = max(1, count // 500)
    servers, ports = [], {}
    try:
        for name, prefix, bind in (("host", [], "127.0.0.1"), ("notebook", inside, "0.0.0.0")):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                ports[name] = probe.getsockname()[1]
            proc = subprocess.Popen(
                [*prefix, "/usr/bin/python3", "-c", ECHO, bind, str(ports[name])],
                stdout=subprocess.PIPE,
                text=True,
            )
            proc.stdout.readline()
            servers.append(proc)
        for _ in range(blocks):
            _timed_echo("127.0.0.1", ports["host"], 500, host)
            _timed_echo(address, ports["notebook"], 500, notebook)
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
    return host, notebook


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--round-trips", type=int, default=5000)
    args = parser.parse_args()
    prepare()

    tag = uuid.uuid4().hex[:6]
    ns, outer, inner = f"nbb-{tag}", f"nbbh{tag}", f"nbbn{tag}"
    notebook_id = str(uuid.uuid4())
    uid = settings.NBCLOUD_SANDBOX_UID_BASE + settings.NBCLOUD_SANDBOX_UID_COUNT - 1
    served = Path(tempfile.mkdtemp())
    with open(served / "blob", "wb") as blob:
        blob.truncate(args.size_mib * 1024**2)
    server = relay = None
    try:
        ip("netns", "add", ns)
        ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns)
        ip("addr", "add", "198.51.100.1/24", "dev", outer)
        ip("-n", ns, "addr", "add", "198.51.100.2/24", "dev", inner)
        ip("link", "set", outer, "up")
        ip("-n", ns, "link", "set", inner, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "http.server", "8080",
             "-d", str(served), "--bind", "198.51.100.2"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        relay = network.create(notebook_id, uid)
        inside = [
            "nsenter", f"--net={network.netns_path(notebook_id)}", "setpriv",
            f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
        ]  # fmt: skip
        url = "http://198.51.100.2:8080/blob"
        for _ in range(50):
            try:
                download([], url.replace("blob", ""))
                break
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        download(inside, url)  # warm both paths once
        download([], url)
        host, notebook = [], []
        for _ in range(args.runs):
            host.append(download([], url))
            notebook.append(download(inside, url))
        rtt_host, rtt_notebook = round_trips(inside, relay["address"], args.round_trips)
    finally:
        if relay:
            network.destroy(relay)
        if server:
            server.kill()
        ip("netns", "delete", ns, check=False)
        ip("link", "delete", outer, check=False)
        (served / "blob").unlink(missing_ok=True)

    mib = args.size_mib
    result = {
        "size_mib": mib,
        "runs": args.runs,
        "host_s": host,
        "notebook_s": notebook,
        "host_mib_s": mib / statistics.median(host),
        "notebook_mib_s": mib / statistics.median(notebook),
    }
    result["ratio_notebook_to_host"] = result["notebook_mib_s"] / result["host_mib_s"]
    for name, samples in (("host", rtt_host), ("notebook", rtt_notebook)):
        samples.sort()
        result[f"rtt_{name}_p50_ms"] = samples[len(samples) // 2] * 1e3
        result[f"rtt_{name}_p99_ms"] = samples[int(len(samples) * 0.99)] * 1e3
    out = ROOT / "bench" / "results" / "network.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"host:     median {statistics.median(host):.2f} s  ({result['host_mib_s']:.0f} MiB/s)")
    print(
        f"notebook: median {statistics.median(notebook):.2f} s  "
        f"({result['notebook_mib_s']:.0f} MiB/s)"
    )
    print(f"notebook / host throughput: {result['ratio_notebook_to_host']:.2f}")
    for name in ("host", "notebook"):
        print(
            f"round trip to {name:8}: p50 {result[f'rtt_{name}_p50_ms']:.3f} ms, "
            f"p99 {result[f'rtt_{name}_p99_ms']:.3f} ms"
        )


if __name__ == "__main__":
    main()
