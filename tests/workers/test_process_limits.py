"""The process runtime's editors run inside cgroups with their flavor's CPU and memory limits."""

import subprocess
import sys
import uuid

import pytest

from workers.runtimes import cgroups

pytestmark = pytest.mark.skipif(
    cgroups.version() is None, reason="cgroups are not writable here (needs root)"
)


@pytest.fixture
def group_name():
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield name
    cgroups.remove(name)


def test_a_process_over_its_memory_limit_is_killed(group_name):
    groups = cgroups.create(group_name, cpus=1, memory_bytes=128 * 1024**2)
    assert cgroups.limits(group_name) == {"cpus": 1.0, "memory_bytes": 128 * 1024**2}
    allocate = "b = bytearray({size}); b[::4096] = b'x' * len(b[::4096]); print('ok')"
    small = subprocess.run(
        cgroups.join_argv(groups, [sys.executable, "-c", allocate.format(size=32 * 1024**2)]),
        capture_output=True,
        text=True,
    )
    assert small.returncode == 0 and small.stdout.strip() == "ok", small.stderr
    big = subprocess.run(
        cgroups.join_argv(groups, [sys.executable, "-c", allocate.format(size=512 * 1024**2)]),
        capture_output=True,
        text=True,
    )
    assert big.returncode in (-9, 137), (big.returncode, big.stderr[-300:])


def test_children_join_the_group_from_their_first_instruction(group_name):
    groups = cgroups.create(group_name, cpus=2, memory_bytes=0)
    shown = subprocess.run(
        cgroups.join_argv(groups, ["/bin/sh", "-c", "cat /proc/self/cgroup"]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"/{cgroups.PARENT}/{group_name}" in shown
    assert cgroups.limits(group_name) == {"cpus": 2.0, "memory_bytes": None}


def test_groups_are_removed_once_empty(group_name):
    groups = cgroups.create(group_name, cpus=1, memory_bytes=64 * 1024**2)
    assert all(g.is_dir() for g in groups)
    cgroups.remove(group_name)
    assert not any(g.exists() for g in groups)
    assert cgroups.limits(group_name) == {}
