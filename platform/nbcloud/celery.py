"""The Celery app of the control plane: `celery -A nbcloud worker -Q control,billing`,
`celery -A nbcloud beat`, `celery -A nbcloud flower`.

It knows the control tasks (`nbcloud.tasks`) and sends every other task by name
(`nbcloud.dispatch`). A host's worker runs `celery -A workers worker --host-name
NAME`: the same app with the host's tasks and options added (`workers.celery`).
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nbcloud.settings")

app = Celery("nbcloud")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.include = ["nbcloud.tasks"]
app.conf.task_routes = ("nbcloud.dispatch.route_task",)
