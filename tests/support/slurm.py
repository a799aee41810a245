"""A real one-node Slurm cluster on this machine, from Debian's packages (`make
sysdeps-test` installs slurm-wlm and munge): munged as `munge`, slurmctld and
slurmd as root, all in a folder of their own with their own ports, so nothing of
the machine's own Slurm (if any) is touched. SLURM_CONF points the commands,
and the workers started with this environment, at it.

A second node, `node2` (partition `far`), runs in a network namespace the
fixture makes, joined to this machine by a veth pair (10.231.0.1 here,
10.231.0.2 there) and with a hostname of its own: its jobs see only that
network, as a compute node that is not the submit node would, so a notebook
there answers the gateway only through its node's address."""

import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from support.gpu import nvml_readings
from support.waiting import wait_for

DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/sbatch")


FAR_NODE = "node2"
FAR_PARTITION = "far"
FAR_NETNS = "nbtest-slurm-far"
HERE, THERE = "10.231.0.1", "10.231.0.2"


@dataclass(frozen=True)
class SlurmCluster:
    folder: Path
    conf: Path
    node: str
    cpus: int
    far_node: str = FAR_NODE
    far_partition: str = FAR_PARTITION
    far_address: str = THERE
    # slurmdbd's database in the machine's MariaDB ("" without accounting).
    accounting_db: str = ""

    def run(self, *argv: str) -> str:
        env = {**os.environ, "SLURM_CONF": str(self.conf)}
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
        assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
        return done.stdout

    def submit(self, *options: str, command: str = "sleep 600") -> str:
        argv = ["sbatch", "--parsable", "--output=/dev/null", *options, "--wrap", command]
        return self.run(*argv).strip()

    def job_state(self, job_id: str) -> str:
        out = self.run("scontrol", "show", "job", "-o", job_id)
        return out.split("JobState=")[1].split()[0]

    def cancel_all(self) -> None:
        self.run("scancel", "--user=root")

    @property
    def job_env(self) -> dict[str, str]:
        """What the jobs need to see the node's GPUs: its device nodes, and an
        `nvidia-smi` answering from the H100's readings (set in the submitter's
        environment: jobs are submitted with --export=ALL)."""
        return {
            "PATH": f"{self.folder / 'bin'}:{os.environ['PATH']}",
            "NBCLOUD_DEVICE_ROOT": str(self.folder / "dev"),
        }


def missing() -> str:
    """Why a cluster cannot start here, or ""."""
    if os.geteuid() != 0:
        return "needs root (slurmd runs jobs as their users)"
    absent = [path for path in DAEMONS if not Path(path).exists()]
    if absent:
        return (
            f"{', '.join(absent)} missing: run make sysdeps-test (apt-get install slurm-wlm munge)"
        )
    return ""


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


MYSQL = ("127.0.0.1", 3306)  # the machine's MariaDB, root without a password


def mysql_missing() -> str:
    """Why slurmdbd cannot keep accounting here, or ""."""
    if not Path("/usr/sbin/slurmdbd").exists():
        return "/usr/sbin/slurmdbd missing: run make sysdeps-test (apt-get install slurmdbd)"
    try:
        socket.create_connection(MYSQL, timeout=2).close()
    except OSError:
        return f"no MariaDB answers on {MYSQL[0]}:{MYSQL[1]}"
    return ""


def _slurmdbd(folder: Path, node: str, socket_path: Path) -> tuple[str, str]:
    """Start slurmdbd on a database of its own in the machine's MariaDB; the lines
    slurm.conf needs for it, and the database's name."""
    (port,) = _free_ports(1)
    database = f"nbtest_slurm_{os.urandom(4).hex()}"
    conf = folder / "slurmdbd.conf"  # beside slurm.conf, where slurmdbd looks
    conf.write_text(
        f"""AuthType=auth/munge
AuthInfo=socket={socket_path}
DbdHost={node}
DbdAddr=127.0.0.1
DbdPort={port}
SlurmUser=root
PidFile={folder}/slurmdbd.pid
LogFile={folder}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost={MYSQL[0]}
StoragePort={MYSQL[1]}
StorageUser=root
StorageLoc={database}
"""
    )
    os.chmod(conf, 0o600)
    subprocess.run(["/usr/sbin/slurmdbd"], check=True, timeout=60)

    def answers() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_for(answers, timeout=60, interval=0.5, what="slurmdbd to answer")
    lines = (
        "AccountingStorageType=accounting_storage/slurmdbd\n"
        f"AccountingStorageHost=127.0.0.1\nAccountingStoragePort={port}\n"
        # The munge socket slurmctld signs its messages to slurmdbd with.
        f"AccountingStoragePass={socket_path}\n"
    )
    return lines, database


def _far_network() -> None:
    """The second node's network namespace and its veth pair (made afresh)."""
    _drop_far_network()
    for argv in (
        ["ip", "netns", "add", FAR_NETNS],
        ["ip", "link", "add", "nbts-far-h", "type", "veth", "peer", "name", "nbts-far-n"],
        ["ip", "link", "set", "nbts-far-n", "netns", FAR_NETNS],
        ["ip", "addr", "add", f"{HERE}/30", "dev", "nbts-far-h"],
        ["ip", "link", "set", "nbts-far-h", "up"],
        ["ip", "-n", FAR_NETNS, "addr", "add", f"{THERE}/30", "dev", "nbts-far-n"],
        ["ip", "-n", FAR_NETNS, "link", "set", "nbts-far-n", "up"],
        ["ip", "-n", FAR_NETNS, "link", "set", "lo", "up"],
    ):
        subprocess.run(argv, check=True, capture_output=True, timeout=30)


def _drop_far_network() -> None:
    subprocess.run(["ip", "netns", "del", FAR_NETNS], capture_output=True, timeout=30)
    subprocess.run(["ip", "link", "del", "nbts-far-h"], capture_output=True, timeout=30)


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _gpus(folder: Path, count: int) -> str:
    """The node's GPUs as Slurm GRES of type h100: device nodes of NVIDIA's major
    number in `folder`/dev (no driver behind them: Slurm only needs the files, and
    the sandbox binds them), and an `nvidia-smi` in `folder`/bin that answers the
    launcher's query from the H100's NVML readings."""
    (folder / "dev").mkdir()
    (folder / "bin").mkdir()
    for minor in range(count):
        os.mknod(folder / "dev" / f"nvidia{minor}", 0o666 | stat.S_IFCHR, os.makedev(195, minor))
    devices = nvml_readings()["devices"][:count]
    rows = "".join(f"{d['index']}, {d['index']}, {d['uuid']}\n" for d in devices)
    smi = folder / "bin" / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\n# the H100's readings (tests/fixtures/gpu)\nprintf '{rows}'\n")
    smi.chmod(0o755)
    files = f"{folder}/dev/nvidia[0-{count - 1}]" if count > 1 else f"{folder}/dev/nvidia0"
    return f"Name=gpu Type=h100 File={files}\n"


def start(folder: Path, cpus: int = 4, memory_mb: int = 16000, gpus: int = 1) -> SlurmCluster:
    """Start munged, slurmctld and slurmd in `folder`; a node of `cpus` CPUs and `gpus`
    GPUs (declared, whatever the machine has: Slurm counts and allots them, the
    sandbox's cgroups limit the CPUs; the GPUs are the fixture's H100, as many as
    its readings hold)."""
    munge = pwd.getpwnam("munge")
    for name in ("munge", "spool/ctld", "spool/d", "log"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    for path in (folder / "munge", key):
        os.chown(path, munge.pw_uid, munge.pw_gid)
    os.chmod(folder / "munge", 0o700)
    os.chmod(key, 0o400)
    socket_path = folder / "munge" / "munge.sock"
    subprocess.run(
        [
            "runuser",
            "-u",
            "munge",
            "--",
            "/usr/sbin/munged",
            f"--key-file={key}",
            f"--socket={socket_path}",
            f"--pid-file={folder / 'munge' / 'munged.pid'}",
            f"--log-file={folder / 'munge' / 'munged.log'}",
            f"--seed-file={folder / 'munge' / 'seed'}",
            "--force",
        ],
        check=True,
        timeout=30,
    )
    node = socket.gethostname().split(".")[0]
    ctld_port, d_port = _free_ports(2)
    _far_network()
    (folder / "gres.conf").write_text(_gpus(folder, gpus) if gpus else "")
    conf = folder / "slurm.conf"
    os.environ["SLURM_CONF"] = str(conf)
    accounting, database = (
        ("AccountingStorageType=accounting_storage/none\n", "")
        if mysql_missing()
        else _slurmdbd(folder, node, socket_path)
    )
    conf.write_text(
        f"""ClusterName=nbtest
SlurmctldHost={node}({HERE})
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={socket_path}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder}/spool/ctld
SlurmdSpoolDir={folder}/spool/d-%n
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd-%n.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd-%n.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
{accounting}JobCompType=jobcomp/filetxt
JobCompLoc={folder}/log/jobcomp.txt
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
SlurmdParameters=config_overrides
MinJobAge=600
DefMemPerCPU=1000
KillWait=10
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} {f"Gres=gpu:h100:{gpus}" if gpus else ""} State=UNKNOWN
PartitionName=nb Nodes={node} Default=YES MaxTime=INFINITE State=UP
NodeName={FAR_NODE} NodeAddr={THERE} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={FAR_PARTITION} Nodes={FAR_NODE} MaxTime=INFINITE State=UP
"""
    )
    os.environ["SLURM_CONF"] = str(conf)
    subprocess.run(["/usr/sbin/slurmctld", "-f", str(conf)], check=True, timeout=30)
    subprocess.run(["/usr/sbin/slurmd", "-f", str(conf)], check=True, timeout=30)
    # The far node: only the network and the hostname are its own (nsenter keeps this
    # machine's mounts, its cgroups among them; `ip netns exec` would remount /sys).
    subprocess.run(
        [
            "nsenter",
            f"--net=/run/netns/{FAR_NETNS}",
            "unshare",
            "--uts",
            "sh",
            "-c",
            f'hostname {FAR_NODE} && exec /usr/sbin/slurmd -f "$1"',
            "sh",
            str(conf),
        ],
        check=True,
        timeout=30,
    )
    cluster = SlurmCluster(folder, conf, node, cpus, accounting_db=database)

    def idle() -> bool:
        try:
            states = cluster.run("sinfo", "-h", "-N", "-o", "%T").split()
        except AssertionError:
            return False
        return states == ["idle", "idle"]

    wait_for(idle, timeout=60, interval=0.5, what="the Slurm node to be idle")
    return cluster


def stop(cluster: SlurmCluster) -> None:
    """Cancel every job, then stop the daemons (SIGTERM, then SIGKILL)."""
    try:
        cluster.cancel_all()
        time.sleep(1)
    except AssertionError:
        pass
    folder = cluster.folder
    pids = [
        *(_pid(path) for path in folder.glob("slurmd-*.pid")),
        _pid(folder / "slurmctld.pid"),
        _pid(folder / "slurmdbd.pid"),
        _pid(folder / "munge" / "munged.pid"),
    ]
    for pid in pids:
        if pid:
            subprocess.run(["kill", str(pid)], capture_output=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(p and Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if pid and Path(f"/proc/{pid}").exists():
            subprocess.run(["kill", "-9", str(pid)], capture_output=True)
    os.environ.pop("SLURM_CONF", None)
    _drop_far_network()
    if cluster.accounting_db:
        subprocess.run(
            ["mysql", "-h", MYSQL[0], "-u", "root", "-e", f"DROP DATABASE {cluster.accounting_db}"],
            capture_output=True,
            timeout=30,
        )
    shutil.rmtree(folder, ignore_errors=True)
