"""Through the gateway versus straight to the editor, on the same machine, in one run.

Starts the platform as `make run` does (runplatform: uvicorn with the gateway,
a worker, the embedded broker) in var/bench-gateway/, runs one JupyterLab
notebook, then measures, interleaved:
  - kernel execute round trip: execute_request -> execute_reply over one
    WebSocket, --executes times each way (p50, p99);
  - download throughput of a --size-mib file from the workspace (median of
    --downloads).
Usage:

    .venv/bin/python bench/gateway.py [--executes 1000] [--size-mib 1024] [--downloads 3]
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests
import websocket

ROOT = Path(__file__).resolve().parent.parent
_getaddrinfo = socket.getaddrinfo


def _resolve_localhost_subdomains(host, *args, **kwargs):
    """`*.localhost` is loopback (RFC 6761), as browsers and curl resolve it: each
    notebook's origin is `<id>.localhost:<port>` on the embedded default."""
    if isinstance(host, str) and host.lower().rstrip(".").endswith(".localhost"):
        host = "127.0.0.1"
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _resolve_localhost_subdomains


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(predicate, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError


def execute_message(code: str) -> tuple[str, str]:
    msg_id = uuid.uuid4().hex
    return msg_id, json.dumps(
        {
            "header": {
                "msg_id": msg_id,
                "msg_type": "execute_request",
                "username": "bench",
                "session": "bench",
                "version": "5.3",
            },
            "parent_header": {},
            "metadata": {},
            "channel": "shell",
            "buffers": [],
            "content": {
                "code": code,
                "silent": False,
                "store_history": False,
                "user_expressions": {},
                "allow_stdin": False,
            },
        }
    )


def round_trip(ws, code: str = "1") -> float:
    msg_id, message = execute_message(code)
    started = time.perf_counter()
    ws.send(message)
    while True:
        reply = json.loads(ws.recv())
        if reply["msg_type"] == "execute_reply" and reply["parent_header"].get("msg_id") == msg_id:
            return time.perf_counter() - started


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def download(url: str, headers: dict) -> float:
    started, total = time.perf_counter(), 0
    with requests.get(url, headers=headers, stream=True, timeout=600) as reply:
        reply.raise_for_status()
        for chunk in reply.iter_content(1 << 20):
            total += len(chunk)
    return total / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--executes", type=int, default=1000)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--downloads", type=int, default=3)
    args = parser.parse_args()

    data_dir = ROOT / "var" / "bench-gateway"
    shutil.rmtree(data_dir, ignore_errors=True)
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    env = {**os.environ, "NBCLOUD_DATA_DIR": str(data_dir), "NBCLOUD_PUBLIC_URL": public}
    env.pop("CELERY_BROKER_URL", None)
    env.pop("DATABASE_URL", None)
    manage = [sys.executable, str(ROOT / "manage.py")]
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
    platform = subprocess.Popen(
        [*manage, "runplatform", "--port", str(port), "--no-beat", "--no-flower"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    auth = {"Authorization": f"Bearer {token}"}
    api = f"{public}/api/v1/projects/bench/notebooks/"
    try:
        wait(lambda: requests.get(api, headers=auth, timeout=5).ok, timeout=60)
        spec = {
            "name": "bench",
            "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
            "resources": {"cpu": 1},
        }
        notebook = requests.post(api, json=spec, headers=auth, timeout=10).json()
        status = wait(
            lambda: (
                (
                    s := requests.get(f"{api}{notebook['id']}/", headers=auth, timeout=5).json()[
                        "status"
                    ]
                )["state"]
                == "RUNNING"
                and s
            )
        )
        gateway_base = status["url"]

        sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]
        os.environ.update(
            {"NBCLOUD_DATA_DIR": str(data_dir), "DJANGO_SETTINGS_MODULE": "nbcloud.settings"}
        )
        import django

        django.setup()
        from nbcloud.notebooks.models import Notebook

        row = Notebook.objects.get(pk=notebook["id"])
        direct_base = row.editor_url + f"/notebooks/{row.pk}/"
        direct = {"Authorization": f"token {row.editor_secret}"}

        kernel = requests.post(
            f"{gateway_base}api/kernels", headers=auth, json={}, timeout=30
        ).json()["id"]
        channels = f"api/kernels/{kernel}/channels"
        via_gateway = websocket.create_connection(
            gateway_base.replace("http", "ws", 1) + channels, header=auth, timeout=60
        )
        straight = websocket.create_connection(
            direct_base.replace("http", "ws", 1) + channels, header=direct, timeout=60
        )
        round_trip(via_gateway, f"open('/workspace/big.bin', 'wb').truncate({args.size_mib} << 20)")
        for ws in (via_gateway, straight):  # warm up
            for _ in range(20):
                round_trip(ws)
        rtt = {"gateway": [], "direct": []}
        for _ in range(args.executes // 100):
            for name, ws in (("gateway", via_gateway), ("direct", straight)):
                rtt[name] += [round_trip(ws) for _ in range(100)]
        via_gateway.close()
        straight.close()

        throughput = {"gateway": [], "direct": []}
        for _ in range(args.downloads):
            throughput["gateway"].append(download(f"{gateway_base}files/big.bin", auth))
            throughput["direct"].append(download(f"{direct_base}files/big.bin", direct))
        requests.post(f"{api}{notebook['id']}/stop/", headers=auth, timeout=10)
        wait(
            lambda: (
                requests.get(f"{api}{notebook['id']}/", headers=auth, timeout=5).json()["status"][
                    "state"
                ]
                == "STOPPED"
            ),
            timeout=300,
        )
    finally:
        platform.terminate()
        platform.wait(60)

    ms = {
        k: {"p50": percentile(v, 50) * 1000, "p99": percentile(v, 99) * 1000}
        for k, v in rtt.items()
    }
    mibs = {k: statistics.median(v) / (1 << 20) for k, v in throughput.items()}
    report = {
        "executes_each": len(rtt["gateway"]),
        "rtt_ms": ms,
        "rtt_overhead_ms": {p: ms["gateway"][p] - ms["direct"][p] for p in ("p50", "p99")},
        "download_mib_s": mibs,
        "download_samples_mib_s": {k: [x / (1 << 20) for x in v] for k, v in throughput.items()},
        "download_ratio_direct_over_gateway": mibs["direct"] / mibs["gateway"],
        "size_mib": args.size_mib,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "gateway.json").write_text(json.dumps(report, indent=2))
    print(f"kernel execute round trip over {len(rtt['gateway'])} executes each:")
    for name in ("direct", "gateway"):
        print(f"  {name:8s} p50 {ms[name]['p50']:6.2f} ms   p99 {ms[name]['p99']:6.2f} ms")
    print(
        f"  overhead p50 {report['rtt_overhead_ms']['p50']:+.2f} ms   p99 {report['rtt_overhead_ms']['p99']:+.2f} ms"
    )
    print(f"download of {args.size_mib} MiB, median of {args.downloads}:")
    for name in ("direct", "gateway"):
        print(f"  {name:8s} {mibs[name]:8.1f} MiB/s")
    print(f"  ratio direct / gateway {report['download_ratio_direct_over_gateway']:.2f}")


if __name__ == "__main__":
    main()
