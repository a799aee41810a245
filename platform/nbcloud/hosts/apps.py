from django.apps import AppConfig
from django.core import checks

from nbcloud import datadir


class HostsConfig(AppConfig):
    name = "nbcloud.hosts"

    def ready(self) -> None:
        # Neither makes anything now: the check reads, and a Celery worker or
        # beat of this process prepares the data directory when it starts.
        checks.register(datadir.check_prepared)
        datadir.prepare_when_celery_starts()
