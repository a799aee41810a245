import os

from celery import Celery

from workers.host_step import install as install_host_options

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nbcloud.settings")

app = Celery("nbcloud")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.include = ["workers.tasks", "workers.idle"]
app.conf.task_routes = ("workers.routes.route_task",)
install_host_options(app)
