"""SSH through the platform's gateway, beside plain OpenSSH to a local sshd.

Runs the platform as `make run` does (runplatform: web, worker, the SSH gateway,
embedded broker) in its own data directory, starts a `conda` notebook with a
key of the benchmark's, and a plain `sshd` on loopback that takes the same key;
then, interleaved N times, with the same OpenSSH client and options:
  - first output: from starting `ssh ... echo ready` to its first byte of output
    (connection, key exchange, login, a session, a command started);
  - scp: a 100 MiB file up (into /workspace through the gateway; into a
    directory of the host's through sshd) and back down.
Prints medians and the ratios gateway / sshd; writes bench/results/ssh.json.

    .venv/bin/python bench/ssh.py [--runs 5] [--size-mib 100]     # as root
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from start_latency import ROOT, free_port, running_platform, wait


def keygen(folder: Path, name: str) -> Path:
    path = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def local_sshd(folder: Path, key: Path) -> tuple[subprocess.Popen, int]:
    host_key = keygen(folder, "host_key")
    (folder / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
    port = free_port()
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPidFile {folder / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
        "Subsystem sftp /usr/lib/openssh/sftp-server\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(folder / "sshd_config")])
    return proc, port


def options(key: Path, known_hosts: Path) -> list[str]:
    return [
        "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
        "-i", str(key),
    ]  # fmt: skip


def first_output(opts: list[str], port: int, user: str) -> float:
    started = time.monotonic()
    proc = subprocess.Popen(
        ["ssh", *opts, "-p", str(port), f"{user}@127.0.0.1", "echo ready"],
        stdout=subprocess.PIPE,
    )
    first = proc.stdout.read(1)
    elapsed = time.monotonic() - started
    proc.wait(30)
    assert first == b"r", first
    return elapsed


def scp(opts: list[str], port: int, source: str, target: str) -> float:
    started = time.monotonic()
    subprocess.run(["scp", *opts, "-P", str(port), source, target], check=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size-mib", type=int, default=100)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: notebooks run in sandboxes, and sshd needs root")

    folder = Path(tempfile.mkdtemp(prefix="nbc-bench-ssh-"))
    os.chmod(folder, 0o755)
    key = keygen(folder, "client_key")
    blob = folder / "blob.bin"
    with open(blob, "wb") as f:
        f.write(os.urandom(args.size_mib * 1024 * 1024))
    opts = options(key, folder / "known_hosts")
    sshd, sshd_port = local_sshd(folder, key)
    results: dict[str, list[float]] = {
        k: []
        for k in (
            "gateway_first_output_s", "sshd_first_output_s",
            "gateway_scp_up_s", "sshd_scp_up_s", "gateway_scp_down_s", "sshd_scp_down_s",
        )
    }  # fmt: skip
    gateway_port = free_port()
    try:
        with running_platform("bench-ssh", NBCLOUD_SSH_PORT=str(gateway_port)) as (api, headers):
            spec = {
                "name": "bench-ssh",
                "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
                "resources": {"cpu": 1},
                "ssh_public_keys": [key.with_suffix(".pub").read_text().strip()],
            }
            nb = requests.post(api, json=spec, headers=headers, timeout=10).json()
            url = f"{api}{nb['id']}/"
            wait(
                lambda: (
                    requests.get(url, headers=headers, timeout=10).json()["status"]["state"]
                    == "RUNNING"
                )
            )
            wait(lambda: subprocess.run(
                ["ssh", *opts, "-p", str(gateway_port), f"{nb['id']}@127.0.0.1", "true"],
                capture_output=True,
            ).returncode == 0, timeout=60)  # fmt: skip
            target = f"{nb['id']}@127.0.0.1"
            for _ in range(args.runs):
                results["gateway_first_output_s"].append(first_output(opts, gateway_port, nb["id"]))
                results["sshd_first_output_s"].append(first_output(opts, sshd_port, "root"))
                results["gateway_scp_up_s"].append(
                    scp(opts, gateway_port, str(blob), f"{target}:/workspace/blob.bin")
                )
                results["sshd_scp_up_s"].append(
                    scp(opts, sshd_port, str(blob), f"root@127.0.0.1:{folder}/up.bin")
                )
                results["gateway_scp_down_s"].append(
                    scp(opts, gateway_port, f"{target}:/workspace/blob.bin", str(folder / "d1"))
                )
                results["sshd_scp_down_s"].append(
                    scp(opts, sshd_port, f"root@127.0.0.1:{folder}/up.bin", str(folder / "d2"))
                )
            requests.post(url + "stop/", headers=headers, timeout=10)
    finally:
        sshd.terminate()
        sshd.wait(10)
        shutil.rmtree(folder, ignore_errors=True)

    medians = {k: statistics.median(v) for k, v in results.items()}
    ratios = {
        what: medians[f"gateway_{what}_s"] / medians[f"sshd_{what}_s"]
        for what in ("first_output", "scp_up", "scp_down")
    }
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    summary = {"runs": args.runs, "size_mib": args.size_mib, "samples": results,
               "medians": medians, "ratios": ratios}  # fmt: skip
    (out / "ssh.json").write_text(json.dumps(summary, indent=2))
    print(f"runs: {args.runs}, scp of {args.size_mib} MiB")
    for name, value in medians.items():
        print(f"median {name:24s} {value:7.3f} s   samples {[round(v, 3) for v in results[name]]}")
    for what, ratio in ratios.items():
        print(f"ratio gateway / sshd, {what}: {ratio:.2f}")


if __name__ == "__main__":
    main()
