"""Placing queued notebooks on hosts: regions, capacity, GPUs by UUID, packing, FIFO.

Hosts are rows made here with a chosen inventory; `start_notebook` tasks are
sent on commit and captured, never run.
"""

from datetime import timedelta

import pytest

from nbcloud.hosts.models import HostState
from nbcloud.hosts.services import Placed, Placer, Waiting, capacities, place_queued
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import State
from support.factories import T0, fresh, make_host, make_queued_notebook, release

pytestmark = pytest.mark.django_db


@pytest.fixture
def place(django_capture_on_commit_callbacks):
    """place_queued(), with its start tasks captured on commit instead of sent."""

    def run():
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            placed = place_queued()
        # One start task per placement, to the host's queue.
        starts = [
            (task.args[0], task.kwargs["host"]) for sending in callbacks for task in sending.tasks
        ]
        assert starts == placed
        return placed

    return run


def test_the_placer_names_the_host_and_gpus_or_the_position_in_line(alpha):
    host = make_host("gpu2", cpus=30, memory_gib=100, gpus=2)
    placer = Placer(capacities([host]).values())
    first, second, third = (make_queued_notebook(alpha, f"nb{i}", gpu=1) for i in range(3))
    assert placer.decide(first) == Placed(host, ("GPU-gpu2-0",))
    assert placer.decide(second) == Placed(host, ("GPU-gpu2-1",))
    assert placer.decide(third) == Waiting(1)
    assert placer.decide(make_queued_notebook(alpha, "nb3", gpu=1)) == Waiting(2)
    # Another line (CPUs) does not wait behind the GPU line.
    assert placer.decide(make_queued_notebook(alpha, "cpu", cpu=1)) == Placed(host, ())


def test_cpu_notebook_is_placed_on_a_host_of_its_region(alpha, place):
    make_host("bhs-1", region="BHS")
    host = make_host("gra-1", region="GRA")
    notebook = make_queued_notebook(alpha, "nb", cpu=1)
    assert place() == [(str(notebook.pk), "gra-1")]
    notebook = fresh(notebook)
    assert notebook.state == State.STARTING
    assert notebook.host == host
    assert notebook.gpu_uuids == []
    assert "gra-1" in notebook.info_message
    assert notebook.events.filter(from_state=State.QUEUED, to_state=State.STARTING).exists()


def test_without_a_host_in_its_region_it_stays_queued_with_its_position(alpha, place):
    make_host("gra-1", region="GRA")
    notebook = make_queued_notebook(alpha, "nb", cpu=1, region="BHS")
    assert place() == []
    notebook = fresh(notebook)
    assert notebook.state == State.QUEUED and notebook.host is None
    assert "position 1 in region BHS" in notebook.info_message
    assert not notebook.events.exclude(to_state=State.QUEUED).exists()


def test_cpus_are_reserved_and_a_released_one_lets_the_next_start(alpha, place):
    make_host("small", cpus=2, memory_gib=16)
    first, second, third = (make_queued_notebook(alpha, f"nb{i}", cpu=1) for i in range(3))
    placed = place()
    assert [nb for nb, _ in placed] == [str(first.pk), str(second.pk)]
    third = fresh(third)
    assert third.state == State.QUEUED
    assert "position 1 in region GRA" in third.info_message

    # Placing again changes nothing while the host is full.
    assert place() == []

    release(fresh(first))
    assert place() == [(str(third.pk), "small")]
    assert fresh(third).state == State.STARTING


def test_memory_is_reserved_too(alpha, place):
    # 4 GiB per vCPU: two 1-CPU notebooks need 8 GiB, the host has 6.
    make_host("lowmem", cpus=8, memory_gib=6)
    first, second = make_queued_notebook(alpha, "a", cpu=1), make_queued_notebook(alpha, "b", cpu=1)
    assert place() == [(str(first.pk), "lowmem")]
    assert fresh(second).state == State.QUEUED


def test_gpus_are_assigned_by_uuid_and_never_shared(alpha, place):
    host = make_host("gpu4", cpus=52, memory_gib=160, gpus=4)
    a, b = make_queued_notebook(alpha, "a", gpu=2), make_queued_notebook(alpha, "b", gpu=2)
    assert len(place()) == 2
    a, b = fresh(a), fresh(b)
    assert len(a.gpu_uuids) == 2 and len(b.gpu_uuids) == 2
    assert not set(a.gpu_uuids) & set(b.gpu_uuids)
    assert set(a.gpu_uuids) | set(b.gpu_uuids) == set(host.gpu_uuids)


def test_a_four_gpu_notebook_waits_while_one_gpu_is_used(alpha, place):
    make_host("gpu4", cpus=52, memory_gib=160, gpus=4)
    small = make_queued_notebook(alpha, "small", gpu=1)
    assert place() == [(str(small.pk), "gpu4")]
    big = make_queued_notebook(alpha, "big", gpu=4)
    assert place() == []
    big = fresh(big)
    assert big.state == State.QUEUED
    assert "position 1 in region GRA for 4 GPUs" in big.info_message

    release(fresh(small))
    assert place() == [(str(big.pk), "gpu4")]
    assert len(fresh(big).gpu_uuids) == 4


def test_packing_takes_the_fullest_host_that_fits(alpha, place):
    make_host("a-empty", cpus=52, memory_gib=160, gpus=4)
    busy = make_host("z-busy", cpus=52, memory_gib=160, gpus=4)
    make_queued_notebook(
        alpha,
        "running",
        gpu=2,
        state=State.RUNNING,
        host=busy,
        gpu_uuids=busy.gpu_uuids[:2],
    )
    two = make_queued_notebook(alpha, "two", gpu=1)
    assert place() == [(str(two.pk), "z-busy")]
    assert fresh(two).gpu_uuids == [busy.gpu_uuids[2]]

    # Now z-busy has 1 GPU left: a 2-GPU notebook goes to the empty host.
    pair = make_queued_notebook(alpha, "pair", gpu=2)
    assert place() == [(str(pair.pk), "a-empty")]


def test_packing_of_cpu_notebooks(alpha, place):
    make_host("a-big", cpus=16, memory_gib=64)
    small = make_host("z-small", cpus=4, memory_gib=64)
    notebook = make_queued_notebook(alpha, "nb", cpu=2)
    assert place() == [(str(notebook.pk), "z-small")]
    assert fresh(notebook).host == small


def test_a_draining_host_gets_nothing(alpha, place):
    make_host("draining", cpus=16, memory_gib=64, state=HostState.DRAINING)
    make_host("lost", cpus=16, memory_gib=64, state=HostState.LOST)
    notebook = make_queued_notebook(alpha, "nb", cpu=1)
    assert place() == []
    assert fresh(notebook).state == State.QUEUED
    assert "position 1 in region GRA" in fresh(notebook).info_message


def test_fifo_within_a_kind_but_gpu_and_cpu_queues_are_independent(alpha, place):
    make_host("cpu-host", cpus=2, memory_gib=16)
    # Fits the GPU notebook (13 vCPU, 40 GiB per GPU); too little memory for 12 CPUs.
    make_host("gpu-host", cpus=13, memory_gib=40, gpus=1)
    big_cpu = make_queued_notebook(alpha, "big-cpu", cpu=12)  # fits nowhere
    small_cpu = make_queued_notebook(alpha, "small-cpu", cpu=1)  # would fit cpu-host
    gpu = make_queued_notebook(alpha, "gpu", gpu=1)
    assert place() == [(str(gpu.pk), "gpu-host")]
    big_cpu, small_cpu = fresh(big_cpu), fresh(small_cpu)
    assert big_cpu.state == small_cpu.state == State.QUEUED
    assert "position 1 in region GRA" in big_cpu.info_message
    assert "position 2 in region GRA" in small_cpu.info_message

    # When the first in line goes away, the next one starts.
    release(big_cpu)
    assert place() == [(str(small_cpu.pk), "cpu-host")]


def test_placement_is_in_queue_order(alpha, place):
    make_host("one", cpus=1, memory_gib=4)
    early = make_queued_notebook(alpha, "early", cpu=1)
    late = make_queued_notebook(alpha, "late", cpu=1)
    # Created in the other order: what counts is when they were queued.
    Notebook.objects.filter(pk=late.pk).update(created_at=T0 - timedelta(days=1))
    assert place() == [(str(early.pk), "one")]
    assert "position 1" in fresh(late).info_message


def test_notebooks_that_are_not_queued_are_left_alone(alpha, place):
    make_host("host", cpus=8, memory_gib=64)
    stopped = make_queued_notebook(alpha, "stopped", cpu=1, state=State.STOPPED)
    failed = make_queued_notebook(alpha, "failed", cpu=1, state=State.FAILED)
    assert place() == []
    assert fresh(stopped).state == State.STOPPED and fresh(failed).state == State.FAILED


def test_cpu_notebooks_leave_hosts_with_free_gpus_alone(alpha, place):
    make_host("a-gpu", cpus=64, memory_gib=256, gpus=4)
    cpu_host = make_host("z-cpu", cpus=64, memory_gib=256)
    notebook = make_queued_notebook(alpha, "nb", cpu=2)
    assert place() == [(str(notebook.pk), "z-cpu")]
    assert fresh(notebook).host == cpu_host


def test_local_storage_is_reserved(alpha, place):
    # 50 GiB of local storage per vCPU: the second 2-vCPU notebook does not fit.
    make_host("small-disk", cpus=8, memory_gib=64, disk_gib=150)
    first, second = make_queued_notebook(alpha, "a", cpu=2), make_queued_notebook(alpha, "b", cpu=2)
    assert place() == [(str(first.pk), "small-disk")]
    assert "position 1 in region GRA for 2 CPUs of flavor ai1-1-cpu" in fresh(second).info_message


def test_gpus_of_another_model_are_not_offered(alpha, place):
    make_host("h100s", cpus=64, memory_gib=512, gpus=2, model="NVIDIA H100 80GB HBM3")
    v100 = make_queued_notebook(alpha, "v100", gpu=1)  # ai1-1-gpu: Tesla V100S
    assert place() == []
    assert fresh(v100).state == State.QUEUED
