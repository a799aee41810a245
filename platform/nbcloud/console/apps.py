from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    name = "nbcloud.console"
    label = "console"
    verbose_name = "Console"
