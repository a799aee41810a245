"""The platform's errors: raised without HTTP, answered by the API in one shape.

Each domain error is provoked here through the real API, by what really
raises it, and answers its status code, its code and its message. Then the
rule that keeps HTTP at the edge: host code and services import nothing of
DRF nor of the API.
"""

import ast
from decimal import Decimal
from pathlib import Path

import pytest

from nbcloud import errors
from nbcloud.api.errors import STATUS_CODES
from nbcloud.billing.models import Budget
from nbcloud.notebooks.models import Notebook

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "/api/v1/projects/alpha/"
NOTEBOOKS = f"{PROJECT}notebooks/"
OBJECTS = PROJECT + "datastores/{alias}/containers/data/objects/"


def gpu_spec(name: str, gpus: int = 1) -> dict:
    return {
        "name": name,
        "env": {"framework_id": "pytorch", "editor_id": "jupyterlab"},
        "resources": {"gpu": gpus},
    }


def answer(reply, status: int) -> dict:
    assert reply.status_code == status, reply.content
    return reply.json()


def created(api, name: str = "nb") -> dict:
    return answer(api.post(NOTEBOOKS, gpu_spec(name), format="json"), 201)


def test_every_domain_error_has_its_own_status_code():
    """A new kind of error must say how the API answers it, not fall back silently."""
    kinds = set()
    pending = [errors.DomainError]
    while pending:
        kind = pending.pop()
        kinds.add(kind)
        pending += kind.__subclasses__()
    assert kinds == set(STATUS_CODES), kinds ^ set(STATUS_CODES)


@pytest.mark.django_db
def test_an_action_the_state_refuses_is_409_invalid_state(alice_api):
    notebook = created(alice_api)
    body = answer(alice_api.post(f"{NOTEBOOKS}{notebook['id']}/start/"), 409)
    assert body == {
        "code": "invalid_state",
        "message": "Notebook 'nb' is QUEUED: start is allowed only when it is FAILED, STOPPED.",
    }


@pytest.mark.django_db
def test_a_start_over_the_gpu_quota_is_403_quota_exceeded(alice_api):
    answer(alice_api.post(NOTEBOOKS, gpu_spec("big", 4), format="json"), 201)
    body = answer(alice_api.post(NOTEBOOKS, gpu_spec("more"), format="json"), 403)
    assert body == {
        "code": "quota_exceeded",
        "message": "Project 'alpha' may use 4 GPUs at once; 4 are in use or queued, so 1 more "
        "would exceed it. Stop a notebook or ask an administrator to raise the quota.",
    }


@pytest.mark.django_db
def test_a_start_with_the_budget_spent_is_403_budget_exceeded(alice_api, alpha):
    Budget.objects.create(project=alpha, monthly_amount=Decimal("0"), currency="EUR")
    body = answer(alice_api.post(NOTEBOOKS, gpu_spec("spent"), format="json"), 403)
    assert body["code"] == "budget_exceeded"
    assert body["message"].startswith("Project 'alpha' has spent 0 EUR of its monthly budget")
    assert not Notebook.objects.exists()


@pytest.mark.django_db
def test_an_unknown_token_is_401_with_the_scheme_to_use(client):
    reply = client.get(NOTEBOOKS, HTTP_AUTHORIZATION="Bearer nbc_nobody")
    assert answer(reply, 401) == {"code": "authentication_failed", "message": "Unknown API token."}
    assert reply["WWW-Authenticate"] == "Bearer"


@pytest.mark.django_db
def test_bad_input_is_400_invalid_naming_its_field(alice_api):
    notebook = created(alice_api)
    body = answer(alice_api.get(f"{NOTEBOOKS}{notebook['id']}/metrics/", {"since": "soon"}), 400)
    message = "'soon' is neither an ISO 8601 time (2026-01-31T12:00:00Z) nor seconds back (600)"
    assert body == {
        "code": "invalid",
        "message": f"since: {message}",
        "fields": {"since": [message]},
    }


@pytest.mark.django_db
def test_a_missing_datastore_is_404_not_found(alice_api):
    body = answer(alice_api.get(OBJECTS.format(alias="nowhere")), 404)
    assert body == {
        "code": "not_found",
        "message": "No datastore named 'nowhere' in project alpha (see GET .../datastores/).",
    }


@pytest.mark.django_db
def test_an_object_store_that_does_not_answer_is_502_datastore_unavailable(alice_api):
    closed = "http://127.0.0.1:9"  # discard: nothing listens on loopback
    store = {
        "alias": "down",
        "type": "s3",
        "endpoint": closed,
        "access_key": "k",
        "secret_key": "s",
    }
    answer(alice_api.post(f"{PROJECT}datastores/", store, format="json"), 201)
    body = answer(alice_api.get(OBJECTS.format(alias="down")), 502)
    assert body["code"] == "datastore_unavailable"
    assert body["message"].startswith(f"Cannot reach datastore 'down' ({closed}): ")


@pytest.mark.django_db
def test_the_ovh_api_answers_the_same_errors_in_its_shape(alice):
    from rest_framework.test import APIClient

    ovh = APIClient()
    ovh.credentials(HTTP_AUTHORIZATION=f"Bearer {alice[1]}")
    body = answer(ovh.put("/ovhai/v1/notebook/00000000-0000-0000-0000-000000000000/label"), 404)
    assert body["code"] == "not_found"
    created = answer(ovh.post("/ovhai/v1/notebook", gpu_spec("ovh"), format="json"), 200)
    body = answer(ovh.put(f"/ovhai/v1/notebook/{created['id']}/label", [], format="json"), 400)
    assert body == {
        "code": "invalid",
        "message": "the request body must be a JSON object",
        "fields": {"request": ["the request body must be a JSON object"]},
    }
    # OVH answers 400 where nbcloud answers 409.
    body = answer(ovh.put(f"/ovhai/v1/notebook/{created['id']}/start"), 400)
    assert body["code"] == "invalid_state"


# HTTP stays at the edge.

# Where DRF answers HTTP: the API's folders and the OVH adapter's views.
# The console's views validate forms with the API's own serializers (one set of rules).
DRF_EDGE = ("/api/", "nbcloud/ovhai/views.py", "nbcloud/console/views/")
# Every module that answers HTTP (and may use the API's shared access rules).
HTTP_EDGE = (
    *DRF_EDGE,
    "nbcloud/ovhai/",
    "nbcloud/gateway/",
    "nbcloud/console/",
    "nbcloud/ssh/",  # the SSH gateway lets people in by the API's access rules
    "nbcloud/urls.py",
)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _modules_outside(edge: tuple[str, ...]) -> dict[str, set[str]]:
    """{module path: what it imports} for the platform's and the hosts' modules off `edge`."""
    paths = [*(ROOT / "workers").rglob("*.py"), *(ROOT / "platform" / "nbcloud").rglob("*.py")]
    found = {}
    for path in paths:
        name = path.relative_to(ROOT).as_posix()
        if not any(part in name for part in edge):
            found[name] = _imports(path)
    assert "platform/nbcloud/notebooks/services.py" in found and "workers/tasks.py" in found
    return found


def test_only_the_api_and_the_ovh_views_import_drf():
    offenders = {
        name: sorted(m for m in imports if m.split(".")[0] == "rest_framework")
        for name, imports in _modules_outside(DRF_EDGE).items()
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_host_code_services_and_models_import_nothing_of_the_api():
    offenders = {
        name: sorted(m for m in imports if m.startswith("nbcloud.") and ".api" in m)
        for name, imports in _modules_outside(HTTP_EDGE).items()
    }
    assert {name: found for name, found in offenders.items() if found} == {}
