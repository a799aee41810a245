"""Rows as the API or a worker would make them, and API clients with a token."""

from datetime import timedelta
from itertools import count

from django.utils import timezone
from rest_framework.test import APIClient

from nbcloud.hosts.models import Host, HostState
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import State
from nbcloud.projects.models import ApiToken, Datastore, Membership, Project

GIB = 1024**3
# Before any notebook a test queues: queued_at values count up from here.
T0 = timezone.now() - timedelta(hours=1)
_queue_order = count()


def api_client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def make_member(django_user_model, username: str, project: Project, role: str):
    """A member of `project` with `role`, and an app token of theirs: (user, token)."""
    user, _ = django_user_model.objects.get_or_create(username=username)
    Membership.objects.get_or_create(project=project, user=user, defaults={"role": role})
    _, value = ApiToken.issue(project=project, user=user, role=role, name=f"{username}-{role}")
    return user, value


def make_notebook(project: Project, **fields) -> Notebook:
    """A notebook row as the API would create it (a CPU conda/JupyterLab one)."""
    spec = {
        "name": "n",
        "framework_id": "conda",
        "framework_version": "py311",
        "editor_id": "jupyterlab",
        "flavor": "ai1-1-cpu",
        "cpu": 1,
        "region": "GRA",
    }
    return Notebook.objects.create(project=project, **{**spec, **fields})


def make_queued_notebook(project, name, *, cpu=0, gpu=0, flavor="", **fields) -> Notebook:
    """A QUEUED notebook for placement (default flavors: V100S or CPU); each one made
    later queues later."""
    return make_notebook(
        project,
        name=name,
        flavor=flavor or ("ai1-1-gpu" if gpu else "ai1-1-cpu"),
        gpu=gpu,
        cpu=cpu,
        state=fields.pop("state", State.QUEUED),
        queued_at=T0 + timedelta(seconds=next(_queue_order)),
        **fields,
    )


def release(notebook: Notebook) -> None:
    """The notebook stopped: its host and GPUs free again."""
    Notebook.objects.filter(pk=notebook.pk).update(state=State.STOPPED, host=None, gpu_uuids=[])


def fresh(row):
    """The row as the database has it now."""
    row.refresh_from_db()
    return row


def make_host(
    name,
    *,
    region="GRA",
    cpus=8,
    memory_gib=64,
    disk_gib=4000,
    gpus=0,
    model="Tesla V100S",
    state=HostState.READY,
) -> Host:
    return Host.objects.create(
        name=name,
        region=region,
        state=state,
        cpus=cpus,
        memory_bytes=memory_gib * GIB,
        disk_bytes=disk_gib * GIB,
        gpus=[
            {
                "index": i,
                "uuid": f"GPU-{name}-{i}",
                "model": model,
                "memory_bytes": 32 * GIB,
            }
            for i in range(gpus)
        ],
    )


def make_s3_datastore(project, endpoint: str, alias: str = "store", secret: str = "testing"):
    """An s3 datastore row of `project` on the test's object store (moto's keys)."""
    store = Datastore(
        project=project,
        alias=alias,
        type="s3",
        endpoint=endpoint,
        region="us-east-1",
        access_key="testing",
    )
    store.set_secrets({"secret_key": secret})
    store.save()
    return store
