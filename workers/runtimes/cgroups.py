"""CPU and memory limits for editors of the process runtime, through cgroups.

Each notebook gets a group `nbcloud/<notebook id>` with its flavor's limits:
on cgroup v2 (one hierarchy with the `cpu` and `memory` controllers) or on
v1 (one hierarchy per controller). The editor's command is prefixed with a
tiny shell that joins the groups and then execs, so everything it starts is
inside from its first instruction. Where cgroups cannot be written (no
root, a read-only /sys/fs/cgroup), editors run without limits and the host
says so in its log once.
"""

import contextlib
import logging
import os
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)
ROOT = Path("/sys/fs/cgroup")
PARENT = "nbcloud"
CPU_PERIOD_US = 100_000


@cache
def version() -> int | None:
    """2 or 1 when this host can make limited groups; None when it cannot."""
    if os.geteuid() != 0:
        return None
    controllers = ROOT / "cgroup.controllers"
    if controllers.exists():
        if {"cpu", "memory"} <= set(controllers.read_text().split()) and os.access(
            ROOT / "cgroup.subtree_control", os.W_OK
        ):
            return 2
    elif all(os.access(ROOT / c, os.W_OK) for c in ("cpu", "memory")):
        return 1
    log.warning("cgroups are not writable here: editors of the process runtime run unlimited")
    return None


def _dirs(name: str) -> list[Path]:
    if version() == 2:
        return [ROOT / PARENT / name]
    dirs = [ROOT / "cpu" / PARENT / name, ROOT / "memory" / PARENT / name]
    if os.access(ROOT / "pids", os.W_OK):
        dirs.append(ROOT / "pids" / PARENT / name)
    return dirs


def _write(path: Path, value) -> None:
    path.write_text(f"{value}\n")


def create(name: str, *, cpus: int, memory_bytes: int, pids: int = 0) -> list[Path]:
    """The notebook's groups with its limits (0: no limit); [] where cgroups are not usable.
    `pids` bounds its processes and threads (a fork bomb stays inside), where the
    host has the pids controller."""
    if version() is None:
        return []
    quota = cpus * CPU_PERIOD_US if cpus else 0
    if version() == 2:
        parent = ROOT / PARENT
        parent.mkdir(exist_ok=True)
        wanted = "+cpu +memory"
        if "pids" in (ROOT / "cgroup.controllers").read_text().split():
            wanted += " +pids"
        _write(ROOT / "cgroup.subtree_control", wanted)
        _write(parent / "cgroup.subtree_control", wanted)
        group = parent / name
        group.mkdir(exist_ok=True)
        _write(group / "cpu.max", f"{quota or 'max'} {CPU_PERIOD_US}")
        _write(group / "memory.max", memory_bytes or "max")
        if (group / "memory.swap.max").exists():
            _write(group / "memory.swap.max", 0)
        if (group / "pids.max").exists():
            _write(group / "pids.max", pids or "max")
        return [group]
    dirs = _dirs(name)
    for group in dirs:
        group.mkdir(parents=True, exist_ok=True)
    cpu, memory = dirs[:2]
    _write(cpu / "cpu.cfs_period_us", CPU_PERIOD_US)
    _write(cpu / "cpu.cfs_quota_us", quota or -1)
    _write(memory / "memory.limit_in_bytes", memory_bytes or -1)
    if len(dirs) > 2:
        _write(dirs[2] / "pids.max", pids or "max")
    return dirs


def kill_leftovers(name: str, launched_with: str) -> list[int]:
    """SIGKILL what still runs in the notebook's groups from a launch whose command
    line held `launched_with` (the workspace this host binds: an editor whose launcher
    died before recording it), so a new editor never runs beside an old one. Another
    host's editor of the notebook on the same machine (test set-ups) is left alone."""
    import psutil

    killed = []
    for group in _dirs(name) if version() is not None else []:
        try:
            pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        except (FileNotFoundError, ValueError):
            continue
        for pid in pids:
            try:
                process = psutil.Process(pid)
                chain = [process, *process.parents()]
                if not any(launched_with in " ".join(p.cmdline()) for p in chain):
                    continue
                process.kill()
            except psutil.Error:
                continue
            killed.append(pid)
    return killed


def join_argv(groups: list[Path], argv: list[str]) -> list[str]:
    """`argv`, first joining `groups` (the shell writes its own pid, then execs)."""
    if not groups:
        return argv
    joins = " && ".join(f'echo $$ > "{g / "cgroup.procs"}"' for g in groups)
    return ["/bin/sh", "-c", f'{joins} && exec "$@"', "nbcloud-cgroup", *argv]


def remove(name: str) -> None:
    """Remove the notebook's groups once their processes are gone."""
    if version() is None:
        return
    for group in _dirs(name):
        with contextlib.suppress(FileNotFoundError, OSError):
            group.rmdir()


def limits(name: str) -> dict:
    """The limits in force for the notebook: {"cpus": float | None, "memory_bytes": int | None}."""
    if version() is None:
        return {}
    try:
        if version() == 2:
            quota, period = (ROOT / PARENT / name / "cpu.max").read_text().split()
            memory = (ROOT / PARENT / name / "memory.max").read_text().strip()
        else:
            cpu, mem = _dirs(name)[:2]
            quota = (cpu / "cpu.cfs_quota_us").read_text().strip()
            period = (cpu / "cpu.cfs_period_us").read_text().strip()
            memory = (mem / "memory.limit_in_bytes").read_text().strip()
    except FileNotFoundError:
        return {}
    unlimited_memory = memory == "max" or int(memory) >= 2**62
    return {
        "cpus": None if quota in ("max", "-1") else int(quota) / int(period),
        "memory_bytes": None if unlimited_memory else int(memory),
    }
