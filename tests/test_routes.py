"""The one routes table: every task has a queue, and host work goes to its host."""

import pytest

from nbcloud.dispatch import ROUTES, Queue, UnroutedTask, route_task
from workers.celery import app


@pytest.fixture(scope="module")
def task_names() -> set[str]:
    # What a host's worker imports: nbcloud.tasks and workers.tasks.
    app.loader.import_default_modules()
    return {name for name in app.tasks if not name.startswith("celery.")}


def test_the_app_registers_the_platform_tasks(task_names):
    assert {"notebooks.schedule", "notebooks.start", "notebooks.stop"} <= task_names


def test_every_task_has_a_route(task_names):
    unrouted = sorted(task_names - set(ROUTES))
    assert not unrouted, f"tasks without a route in nbcloud.dispatch.ROUTES: {unrouted}"


def test_every_route_names_a_task(task_names):
    assert set(ROUTES) <= task_names, sorted(set(ROUTES) - task_names)


def test_an_unknown_task_is_refused():
    with pytest.raises(UnroutedTask, match="notebooks.nope"):
        route_task("notebooks.nope", (), {}, {})


def test_celery_builtins_are_left_to_celery():
    assert route_task("celery.chord_unlock", (), {}, {}) is None


@pytest.mark.parametrize("name", sorted(n for n, q in ROUTES.items() if q is Queue.HOST))
def test_host_tasks_route_to_their_host(name):
    assert route_task(name, ("some-id",), {"host": "gpu-7"}, {}) == {"queue": "host.gpu-7"}
    route = app.amqp.router.route({}, name, args=("some-id",), kwargs={"host": "gpu-7"})
    assert route["queue"].name == "host.gpu-7"


@pytest.mark.parametrize("name", sorted(n for n, q in ROUTES.items() if q is not Queue.HOST))
def test_other_tasks_route_to_their_queue(name):
    expected = str(ROUTES[name])
    assert expected in ("control", "billing")
    assert route_task(name, (), {}, {}) == {"queue": expected}
    assert app.amqp.router.route({}, name, args=(), kwargs={})["queue"].name == expected


def test_scheduling_runs_on_control():
    assert route_task("notebooks.schedule", (), {}, {}) == {"queue": "control"}
    assert route_task("notebooks.reconcile", (), {}, {}) == {"queue": "control"}
