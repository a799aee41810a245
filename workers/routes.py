"""The one routes table: which queue each task runs on.

`control` carries API-side orchestration (scheduling, reconcile), `billing`
the beat ticks, and `host.<name>` the work that must run on one host; tasks
routed to a host take a `host` keyword argument naming it.
"""

from enum import StrEnum


class Queue(StrEnum):
    CONTROL = "control"
    BILLING = "billing"
    HOST = "host"


ROUTES: dict[str, Queue] = {
    "notebooks.schedule": Queue.CONTROL,
    "notebooks.reconcile": Queue.CONTROL,
    "notebooks.start": Queue.HOST,
    "notebooks.stop": Queue.HOST,
    "notebooks.delete": Queue.HOST,
    "notebooks.push_volumes": Queue.HOST,
    "hosts.check_notebooks": Queue.HOST,
    "notebooks.check_limits": Queue.CONTROL,
    "notebooks.restart": Queue.HOST,
    "hosts.check_idle": Queue.HOST,
    "billing.tick": Queue.BILLING,
}


class UnroutedTask(LookupError):
    pass


def host_queue(host: str) -> str:
    return f"{Queue.HOST}.{host}"


def route_task(name, args, kwargs, options, task=None, **kw):
    if name.startswith("celery."):
        return None
    try:
        queue = ROUTES[name]
    except KeyError:
        raise UnroutedTask(f"task {name!r} has no route: add it to workers.routes.ROUTES") from None
    if queue is Queue.HOST:
        return {"queue": host_queue(kwargs["host"])}
    return {"queue": str(queue)}
