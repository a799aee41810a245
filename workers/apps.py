from django.apps import AppConfig


class WorkersConfig(AppConfig):
    """The host side as a Django app: only for its management commands (buildenvs,
    buildimages, installcodeserver), which set up a host. Loading the app imports
    nothing of the host code; the web process never runs it."""

    name = "workers"
    verbose_name = "Host workers"
