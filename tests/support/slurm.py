"""A real Slurm cluster on this machine, from Debian's packages (`make sysdeps-test`
installs slurm-wlm, slurmdbd and munge): munged as `munge`, slurmdbd, slurmctld and
slurmd as root, all in a folder of their own with their own ports, so nothing of
the machine's own Slurm (if any) is touched. SLURM_CONF points the commands,
and the workers started with this environment, at it.

A second node, `node2` (partition `far`), runs in a network namespace the
fixture makes, joined to this machine by a veth pair (10.231.N.1 here,
10.231.N.2 there, N free on this machine) and with a hostname of its own: its jobs see only that
network, as a compute node that is not the submit node would, so a notebook
there answers the gateway only through its node's address."""

import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from support.gpu import nvml_readings
from support.waiting import wait_for

DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/sbatch")


FAR_NODE = "node2"
FAR_PARTITION = "far"


@dataclass(frozen=True)
class SlurmCluster:
    folder: Path
    conf: Path
    node: str
    cpus: int
    far_node: str = FAR_NODE
    far_partition: str = FAR_PARTITION
    far_address: str = ""
    far_slot: int = 0
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

    def power_off_far_node(self) -> None:
        """The far node fails as a machine does: its slurmd and every process of its
        jobs die at once (SIGKILL); slurmctld is told it is down."""
        pid = _pid(self.folder / f"slurmd-{self.far_node}.pid")
        jobs = self.run("squeue", "-h", "-w", self.far_node, "-o", "%i").split()
        doomed = [pid] if pid else []
        for proc in psutil.process_iter(["cmdline", "environ"]):
            try:
                env = proc.info["environ"] or {}
            except psutil.Error:
                continue
            if env.get("SLURM_JOB_ID") in jobs or any(
                f"[{job}." in " ".join(proc.info["cmdline"] or ()) for job in jobs
            ):
                doomed.append(proc.pid)
        for victim in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        self.run("scontrol", "update", f"nodename={self.far_node}", "state=down", "reason=power")

    def power_on_far_node(self) -> None:
        """Its slurmd started again (a reboot): Slurm gives the node jobs again once it
        registers (ReturnToService=2), or once resumed."""
        _start_far_slurmd(self.conf, self.far_slot)
        state = self.run("sinfo", "-h", "-N", "-n", self.far_node, "-o", "%T").strip()
        if "down" in state or "drain" in state:
            self.run("scontrol", "update", f"nodename={self.far_node}", "state=resume")


def missing() -> str:
    """Why a cluster cannot start here, or ""."""
    if os.geteuid() != 0:
        return "needs root (slurmd runs jobs as their users)"
    absent = [path for path in DAEMONS if not Path(path).exists()]
    if absent:
        return f"{', '.join(absent)} missing: run make sysdeps-test (apt-get install slurm-wlm slurmdbd munge)"
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


def _far_names(slot: int) -> tuple[str, str, str, str, str]:
    """The far node's network namespace, veth ends and addresses for `slot` (each
    cluster its own, so two test runs on one machine keep apart)."""
    return (
        f"nbtest-slurm-far{slot}",
        f"nbtsf{slot}h",
        f"nbtsf{slot}n",
        f"10.231.{slot}.1",
        f"10.231.{slot}.2",
    )


def _far_network() -> int:
    """The second node's network namespace and its veth pair, in a free slot."""
    taken = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    slot = next(
        n for n in random.sample(range(256), 256) if f"nbtest-slurm-far{n} " not in taken + " "
    )
    netns, here_end, there_end, here, there = _far_names(slot)
    for argv in (
        ["ip", "netns", "add", netns],
        ["ip", "link", "add", here_end, "type", "veth", "peer", "name", there_end],
        ["ip", "link", "set", there_end, "netns", netns],
        ["ip", "addr", "add", f"{here}/30", "dev", here_end],
        ["ip", "link", "set", here_end, "up"],
        ["ip", "-n", netns, "addr", "add", f"{there}/30", "dev", there_end],
        ["ip", "-n", netns, "link", "set", there_end, "up"],
        ["ip", "-n", netns, "link", "set", "lo", "up"],
    ):
        subprocess.run(argv, check=True, capture_output=True, timeout=30)
    return slot


def _start_far_slurmd(conf: Path, slot: int) -> None:
    """The far node's slurmd: only the network and the hostname are its own (nsenter
    keeps this machine's mounts, its cgroups among them; `ip netns exec` would
    remount /sys)."""
    subprocess.run(
        [
            "nsenter",
            f"--net=/run/netns/{_far_names(slot)[0]}",
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


def _drop_far_network(slot: int) -> None:
    netns, here_end, *_ = _far_names(slot)
    subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30)
    subprocess.run(["ip", "link", "del", here_end], capture_output=True, timeout=30)


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
    slot = _far_network()
    far_netns, _, _, here, there = _far_names(slot)
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
SlurmctldHost={node}({here})
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
NodeName={FAR_NODE} NodeAddr={there} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={FAR_PARTITION} Nodes={FAR_NODE} MaxTime=INFINITE State=UP
"""
    )
    os.environ["SLURM_CONF"] = str(conf)
    subprocess.run(["/usr/sbin/slurmctld", "-f", str(conf)], check=True, timeout=30)
    subprocess.run(["/usr/sbin/slurmd", "-f", str(conf)], check=True, timeout=30)
    _start_far_slurmd(conf, slot)
    cluster = SlurmCluster(
        folder, conf, node, cpus, far_address=there, far_slot=slot, accounting_db=database
    )

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
    _drop_far_network(cluster.far_slot)
    if cluster.accounting_db:
        subprocess.run(
            ["mysql", "-h", MYSQL[0], "-u", "root", "-e", f"DROP DATABASE {cluster.accounting_db}"],
            capture_output=True,
            timeout=30,
        )
    shutil.rmtree(folder, ignore_errors=True)
