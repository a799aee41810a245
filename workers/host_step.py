"""`celery worker --host-name NAME --region R --host-labels k=v`: the options,
and the worker bootstep that runs the host's agent (workers.host_agent).

Imported with the Celery app, before Django is set up: the agent itself is
imported only once the worker builds its steps.
"""

import click
from celery import bootsteps

from nbcloud.dispatch import host_queue


class HostStep(bootsteps.StartStopStep):
    """Runs a HostAgent for the host the worker serves, if it serves one."""

    label = "HostAgent"

    def __init__(self, worker, host_name=None, region=None, host_labels=None, **kwargs):
        from .host_agent import identify

        super().__init__(worker, **kwargs)
        queues = worker.app.amqp.queues
        consumed = set(queues.consume_from)
        self.identity = identify(consumed, host_name, region, host_labels)
        if self.identity is not None and host_name:
            # Without -Q a worker would consume Celery's default queue, which
            # no route uses: a host worker consumes its host's queue alone.
            if consumed == {worker.app.conf.task_default_queue}:
                queues.select([host_queue(self.identity.name)])
            else:
                queues.select_add(host_queue(self.identity.name))

    def include_if(self, worker) -> bool:
        return self.identity is not None

    def create(self, worker):
        from .host_agent import HostAgent

        return HostAgent(self.identity)


def install(app) -> None:
    """Add the host options to `celery worker`, and the step that acts on them."""
    options = app.user_options["worker"]
    options.add(
        click.Option(
            ["--host-name"],
            help="Serve this host: register it, heart-beat and consume its queue host.NAME "
            "(default: NBCLOUD_HOST_NAME, when -Q names its queue).",
        )
    )
    options.add(click.Option(["--region"], help="The host's region (default NBCLOUD_HOST_REGION)."))
    options.add(
        click.Option(
            ["--host-labels"], help="The host's labels, k=v,k2=v2 (default NBCLOUD_HOST_LABELS)."
        )
    )
    app.steps["worker"].add(HostStep)
