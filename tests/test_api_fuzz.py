"""Schemathesis against the API's own OpenAPI schema (/api/v1/schema/).

Every operation is called with generated input (valid and invalid) as alice,
an operator of project `alpha`, through the Django WSGI app. It must never
answer a server error (`not_a_server_error`) and must refuse the same request
without or with a wrong token (`ignored_auth`). A stateful run chains the
calls that schemathesis infers from the schema (create a notebook or a token,
then read, change, act on, delete it) and checks that nothing answers as if
it still existed once deleted (`use_after_free`).

OVH's AI API (/ovhai) is fuzzed the same way, per operation and stateful, from a
description of the paths nbcloud serves (OVH publishes no OpenAPI document with its
SDK). The console's forms are fuzzed in tests/console/test_console_forms_fuzz.py,
the volume parser in tests/notebooks/test_spec_fuzz.py.

No worker runs here: tasks are sent on commit, and these tests run inside a
transaction that never commits, so nothing reaches a broker.
"""

import os
import re
from contextlib import contextmanager

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import ignored_auth, use_after_free

from nbcloud.notebooks.spec import ENV_NAME, LABEL_KEY, LABEL_VALUE

pytestmark = pytest.mark.django_db

CHECKS = [not_a_server_error, ignored_auth, use_after_free]
# Per operation. CI runs 10 fixed examples (well under a minute, the same
# every run); NBCLOUD_FUZZ_EXAMPLES=200 makes a deeper, random run.
DEEP = os.environ.get("NBCLOUD_FUZZ_EXAMPLES")
MAX_EXAMPLES = int(DEEP or 10)
SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=not DEEP,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,  # no example database under the project's folder
)


class _TestTransactionApp:
    """The platform's WSGI app, on the test's own connection and transaction.

    Like Django's test client: a request must not close the connection, or
    the test's transaction (and every row made in it) would be lost.
    """

    def __init__(self):
        self.app = get_wsgi_application()

    def __call__(self, environ, start_response):
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        try:
            response = self.app(environ, start_response)
            try:
                return list(response)
            finally:
                response.close()  # sends request_finished, still without closing
        finally:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)


CONFIG = SchemathesisConfig.from_dict(
    {
        # Alice's project: any other name answers 404 and tests nothing deeper.
        "parameters": {"path.project": "alpha"},
        "generation": {"max-examples": MAX_EXAMPLES},
        "checks": {
            "enabled": False,
            "not_a_server_error": {"enabled": True},
            "ignored_auth": {"enabled": True},
            "use_after_free": {"enabled": True},
        },
    }
)
# Loaded when the module is collected (the schema view reads no table). Not
# `schemathesis.pytest.from_fixture`: its lazy parametrization writes
# `request.node._nodeid`, which pytest 9.2 no longer has.
schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", _TestTransactionApp(), config=CONFIG)


def _creatable(spec: dict) -> dict:
    """The generated spec with what only the catalogue knows made valid.

    A generated `framework_id` or flavor is never one the catalogue has, so
    without this no notebook would be created and nothing behind one tested.
    """
    spec = {**spec, "env": {"framework_id": "conda", "editor_id": "jupyterlab"}}
    spec["resources"] = {"cpu": 1}
    spec.pop("region", None)
    spec.pop("volumes", None)  # volumes need datastores of the project
    spec.pop("ssh_public_keys", None)
    labels = spec.get("labels")
    if isinstance(labels, dict):
        spec["labels"] = {
            k: v
            for k, v in labels.items()
            if LABEL_KEY.match(k) and isinstance(v, str) and LABEL_VALUE.match(v)
        }
    env_vars = spec.get("env_vars")
    if isinstance(env_vars, list):
        spec["env_vars"] = [
            e for e in env_vars if isinstance(e, dict) and ENV_NAME.match(str(e.get("name")))
        ]
    return spec


def _creates_notebooks(operation) -> bool:
    return (
        operation is not None
        and operation.method.lower() == "post"
        and operation.path.endswith("/notebooks/")
    )


@schema.hook("flatmap_body")
def some_creatable_notebooks(context, body):
    if _creates_notebooks(context.operation) and isinstance(body, dict):
        return st.sampled_from([body, _creatable(body)])
    return st.just(body)


def _prepare(case) -> None:
    """What every call does first, in the per-operation and the stateful tests."""
    # The `parameters` setting does not reach stateful steps.
    if case.path_parameters and "project" in case.path_parameters:
        case.path_parameters["project"] = "alpha"
    # The schema also offers form encodings, which cannot carry the nested `env`.
    if (
        _creates_notebooks(case.operation)
        and isinstance(case.body, dict)
        and case.body.get("env") == _creatable({})["env"]
    ):
        case.media_type = "application/json"


@contextmanager
def _rolled_back():
    """Each example starts from the same rows, so that Hypothesis can replay it."""
    with transaction.atomic():
        try:
            yield
        finally:
            transaction.set_rollback(True)


@pytest.fixture
def bearer(alice):
    """Alice's operator token, as the header every generated request carries."""
    return {"Authorization": f"Bearer {alice[1]}"}


@schema.parametrize()
@SETTINGS
def test_api(case, bearer):
    _prepare(case)
    with _rolled_back():
        case.call_and_validate(headers=bearer, checks=CHECKS)


def test_api_stateful(bearer):
    class Workflow(schema.as_state_machine()):
        def setup(self):
            self.savepoint = transaction.savepoint()

        def teardown(self):
            transaction.savepoint_rollback(self.savepoint)
            super().teardown()

        def before_call(self, case):
            _prepare(case)

        def get_call_kwargs(self, case):
            return {"headers": bearer}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(
                response,
                checks=CHECKS,
                headers=bearer,
                transport_kwargs=kwargs or None,
                recorder=self.recorder,
            )

    Workflow.run(settings=settings(SETTINGS, max_examples=4 * MAX_EXAMPLES, stateful_step_count=10))


# A project name comes from the URL as it is. PostgreSQL refuses a NUL byte in
# a text parameter; such a name must answer 404, not 500. The fuzzing above
# keeps `{project}` at `alpha`, so every project operation is tried here.
PROJECT_OPERATIONS = [
    pytest.param(op.path, op.method.upper(), id=f"{op.method.upper()} {op.path}")
    for op in (result.ok() for result in schema.get_all_operations())
    if "{project}" in op.path
]


@pytest.mark.parametrize(("path", "method"), PROJECT_OPERATIONS)
def test_project_name_with_a_nul_byte_is_not_found(path, method, bearer):
    uuid = "00000000-0000-0000-0000-000000000000"
    parameters = {
        name: "1" if name == "id" and "/tokens/" in path else uuid
        for name in re.findall(r"{(\w*id)}", path)
    }
    parameters.update(
        {name: "data" for name in re.findall(r"{(\w+)}", path) if name not in parameters}
    )
    parameters["project"] = "no\x00such"
    case = schema[path][method].Case(path_parameters=parameters)
    with _rolled_back():
        response = case.call_and_validate(headers=bearer, checks=CHECKS)
    assert response.status_code == 404, response.text


# OVHcloud's AI API (/ovhai, the `ovhai` SDK's paths). It is not in nbcloud's
# OpenAPI document and OVH publishes none with its SDK, so the paths nbcloud
# serves are described here, in OVH's shapes (docs/api.md, "OVHcloud AI SDK"),
# with the links a stateful run follows: a notebook or a token created, then
# read, changed, acted on and deleted.

_STRING = {"type": "string"}
_ID = {"name": "id", "in": "path", "required": True, "schema": _STRING}
_NOTEBOOK_SPEC = {
    "type": "object",
    "required": ["env"],
    "properties": {
        "name": _STRING,
        "region": _STRING,
        "labels": {"type": "object", "additionalProperties": _STRING},
        "env": {
            "type": "object",
            "properties": {
                "frameworkId": {"enum": ["conda", "pytorch", "nope"]},
                "frameworkVersion": _STRING,
                "editorId": {"enum": ["jupyterlab", "vscode", "nope"]},
            },
        },
        "envVars": {
            "type": "array",
            "items": {"type": "object", "properties": {"name": _STRING, "value": _STRING}},
        },
        "resources": {
            "type": "object",
            "properties": {
                "cpu": {"type": "integer"},
                "gpu": {"type": "integer"},
                "flavor": _STRING,
            },
        },
        "volumes": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "mountPath": _STRING,
                    "permission": {"enum": ["RO", "RW", "RWD", "X"]},
                    "cache": {"type": "boolean"},
                    "dataStore": {
                        "type": "object",
                        "properties": {"alias": _STRING, "container": _STRING, "prefix": _STRING},
                    },
                    "publicGit": {"type": "object", "properties": {"url": _STRING}},
                },
            },
        },
        "unsecureHttp": {"type": "boolean"},
        "sshPublicKeys": {"type": "array", "items": _STRING},
        "timeoutAutoRestart": {"type": "boolean"},
    },
}
_WITH_ID = {"type": "object", "properties": {"id": _STRING}}


def _ovh_operation(*, body=None, query=(), path_id=False, answers=("200",), links=None):
    operation = {
        "parameters": [*([_ID] if path_id else []), *query],
        "responses": {code: {"description": code} for code in answers},
    }
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    for code in answers:
        if code in ("200", "201"):
            operation["responses"][code]["content"] = {"application/json": {"schema": _WITH_ID}}
    if links:
        operation["responses"]["200"]["links"] = {
            name: {"operationId": target, "parameters": {"id": "$response.body#/id"}}
            for name, target in links.items()
        }
    return operation


def _query(name, schema=_STRING):
    return {"name": name, "in": "query", "required": False, "schema": schema}


_NOTEBOOK_LINKS = {
    f"notebook{name.title()}": f"notebook{name.title()}"
    for name in ("get", "edit", "delete", "start", "stop", "label", "datasync", "backups")
}
OVH_SCHEMA = {
    "openapi": "3.0.3",
    "info": {"title": "OVHcloud AI API for notebooks, as nbcloud serves it", "version": "1"},
    "paths": {
        "/v1/me": {"get": _ovh_operation()},
        "/v1/notebook": {
            "get": _ovh_operation(
                query=[
                    _query("labelSelector"),
                    _query("statusState", {"enum": ["RUNNING", "STOPPED", "QUEUED", "NOPE"]}),
                    _query("page", {"type": "integer"}),
                    _query("size", {"type": "integer"}),
                    _query("sort", {"enum": ["createdAt", "updatedAt", "name", "id", "nope"]}),
                    _query("order", {"enum": ["asc", "desc", "nope"]}),
                ]
            ),
            "post": {
                **_ovh_operation(body=_NOTEBOOK_SPEC, links=_NOTEBOOK_LINKS),
                "operationId": "notebookNew",
            },
        },
        "/v1/notebook/command": {"post": _ovh_operation(body=_NOTEBOOK_SPEC)},
        "/v1/notebook/{id}": {
            "get": {**_ovh_operation(path_id=True), "operationId": "notebookGet"},
            "put": {
                **_ovh_operation(path_id=True, body=_NOTEBOOK_SPEC, answers=("204",)),
                "operationId": "notebookEdit",
            },
            "delete": {
                **_ovh_operation(path_id=True, answers=("204",)),
                "operationId": "notebookDelete",
            },
        },
        **{
            f"/v1/notebook/{{id}}/{action}": {
                "put": {
                    **_ovh_operation(path_id=True, answers=("204",)),
                    "operationId": f"notebook{action.title()}",
                }
            }
            for action in ("start", "stop")
        },
        "/v1/notebook/{id}/label": {
            "put": {
                **_ovh_operation(
                    path_id=True,
                    body={"type": "object", "properties": {"name": _STRING, "value": _STRING}},
                    answers=("204",),
                ),
                "operationId": "notebookLabel",
            }
        },
        "/v1/notebook/{id}/datasync": {
            "post": {
                **_ovh_operation(
                    path_id=True,
                    body={
                        "type": "object",
                        "properties": {"direction": {"enum": ["push", "pull"]}},
                    },
                ),
                "operationId": "notebookDatasync",
            }
        },
        "/v1/notebook/{id}/backup": {
            "get": {**_ovh_operation(path_id=True), "operationId": "notebookBackups"}
        },
        "/v1/notebook/{id}/backup/{backupId}": {
            "get": _ovh_operation(
                path_id=True,
                query=[{"name": "backupId", "in": "path", "required": True, "schema": _STRING}],
            )
        },
        "/v1/notebook/{id}/backup/{backupId}/fork": {
            "post": _ovh_operation(
                path_id=True,
                query=[{"name": "backupId", "in": "path", "required": True, "schema": _STRING}],
            )
        },
        "/v1/capabilities/notebook/framework": {
            "get": _ovh_operation(query=[_query("compatibleWithEditor")])
        },
        "/v1/capabilities/notebook/framework/{id}": {"get": _ovh_operation(path_id=True)},
        "/v1/capabilities/notebook/editor": {
            "get": _ovh_operation(query=[_query("compatibleWithFramework")])
        },
        "/v1/capabilities/notebook/editor/{id}": {"get": _ovh_operation(path_id=True)},
        "/v1/capabilities/flavor": {"get": _ovh_operation()},
        "/v1/capabilities/flavor/{id}": {"get": _ovh_operation(path_id=True)},
        "/v1/capabilities/quota": {"get": _ovh_operation()},
        "/v1/token": {
            "get": _ovh_operation(),
            "post": {
                **_ovh_operation(
                    body={
                        "type": "object",
                        "properties": {
                            "name": _STRING,
                            "role": {
                                "enum": ["ai_training_read", "ai_training_operator", "read", "x"]
                            },
                            "labelSelector": _STRING,
                            "expiresAt": _STRING,
                        },
                    },
                    links={
                        "tokenGet": "tokenGet",
                        "tokenDelete": "tokenDelete",
                        "tokenRenew": "tokenRenew",
                    },
                ),
                "operationId": "tokenNew",
            },
        },
        "/v1/token/{id}": {
            "get": {**_ovh_operation(path_id=True), "operationId": "tokenGet"},
            "delete": {
                **_ovh_operation(path_id=True, answers=("204",)),
                "operationId": "tokenDelete",
            },
        },
        "/v1/token/{id}/renew": {
            "post": {**_ovh_operation(path_id=True), "operationId": "tokenRenew"}
        },
    },
}
OVH_CONFIG = SchemathesisConfig.from_dict(
    {
        "base-url": "http://localhost/ovhai",
        "generation": {"max-examples": MAX_EXAMPLES},
        "checks": {
            "enabled": False,
            "not_a_server_error": {"enabled": True},
            "ignored_auth": {"enabled": True},
            "use_after_free": {"enabled": True},
        },
    }
)
ovh_schema = schemathesis.openapi.from_dict(OVH_SCHEMA, config=OVH_CONFIG)
ovh_schema.app = _TestTransactionApp()


@ovh_schema.hook("flatmap_body")
def some_creatable_ovh_notebooks(context, body):
    """As for nbcloud's API: half the generated notebooks and tokens made creatable (a CPU
    conda notebook; a read token), so that the links behind them are followed."""
    op = context.operation
    creates = op is not None and op.method.lower() == "post" and isinstance(body, dict)
    if creates and op.path == "/v1/token":
        return st.sampled_from([body, {"name": "fuzz", "role": "ai_training_read"}])
    if creates and op.path == "/v1/notebook":
        creatable = {
            **{k: v for k, v in body.items() if k not in ("volumes", "sshPublicKeys", "region")},
            "env": {"frameworkId": "conda", "editorId": "jupyterlab"},
            "resources": {"cpu": 1},
            "labels": {},
            "envVars": [],
        }
        return st.sampled_from([body, creatable])
    return st.just(body)


@ovh_schema.parametrize()
@SETTINGS
def test_ovhai_api(case, bearer):
    with _rolled_back():
        case.call_and_validate(headers=bearer, checks=CHECKS)


def test_ovhai_api_stateful(bearer):
    class Workflow(ovh_schema.as_state_machine()):
        def setup(self):
            self.savepoint = transaction.savepoint()

        def teardown(self):
            transaction.savepoint_rollback(self.savepoint)
            super().teardown()

        def get_call_kwargs(self, case):
            return {"headers": bearer}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(
                response,
                checks=CHECKS,
                headers=bearer,
                transport_kwargs=kwargs or None,
                recorder=self.recorder,
            )

    Workflow.run(settings=settings(SETTINGS, max_examples=4 * MAX_EXAMPLES, stateful_step_count=10))
