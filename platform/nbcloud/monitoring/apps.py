from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "nbcloud.monitoring"

    def ready(self) -> None:
        from . import signals

        signals.connect()
