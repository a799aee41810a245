import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nbcloud.settings")

app = Celery("nbcloud")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.include = ["workers.tasks"]
app.conf.task_routes = ("workers.routes.route_task",)
