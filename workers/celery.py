"""The Celery app of a host's worker: `celery -A workers worker --host-name NAME`.

The control plane's app (`nbcloud.celery`) with the host's tasks and the
worker options and bootstep that serve a host (`host_step`). It also runs the
control tasks, so one worker can serve a whole small platform
(`-Q control,billing,host.NAME`, what `make run` starts).
"""

from nbcloud.celery import app

from .host_step import install as install_host_options

app.conf.include = [*app.conf.include, "workers.tasks"]
install_host_options(app)

__all__ = ("app",)
