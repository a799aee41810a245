"""The OpenAPI document and its docs page, served without any CDN."""

import re

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

NOTEBOOKS = "/api/v1/projects/{project}/notebooks/"


@pytest.fixture
def schema() -> dict:
    reply = APIClient().get("/api/v1/schema/", {"format": "json"})
    assert reply.status_code == 200, reply.content
    return reply.json()


def test_schema_is_openapi_3(schema):
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "nbcloud API"


def test_schema_has_the_notebook_paths(schema):
    paths = schema["paths"]
    item = NOTEBOOKS + "{id}/"
    assert {"get", "post"} <= set(paths[NOTEBOOKS])
    assert {"get", "patch", "delete"} <= set(paths[item])
    for action in ("start", "stop"):
        assert "post" in paths[f"{item}{action}/"]
    for view in ("events", "backups", "usage", "logs"):
        assert "get" in paths[f"{item}{view}/"]
    assert "get" in paths["/api/v1/projects/{project}/quota/"]
    for kind in ("frameworks", "editors", "flavors", "regions"):
        assert "get" in paths[f"/api/v1/capabilities/{kind}/"]
    parameters = {p["name"] for p in paths[NOTEBOOKS]["get"]["parameters"]}
    assert {"state", "label_selector"} <= parameters


def test_schema_as_yaml_by_default():
    reply = APIClient().get("/api/v1/schema/")
    assert reply.status_code == 200
    assert reply.content.startswith(b"openapi: 3.")


def test_docs_page_needs_no_cdn():
    reply = APIClient().get("/api/v1/docs/")
    assert reply.status_code == 200
    html = reply.content.decode()
    assert "swagger" in html.lower()
    external = re.findall(r"""(?:src|href)\s*=\s*["'](?:https?:)?//[^"']+""", html)
    assert not external, external
    for cdn in ("cdn.jsdelivr.net", "unpkg.com", "cdnjs", "googleapis"):
        assert cdn not in html
    # What the page loads is served by the platform itself.
    assets = re.findall(r"""src\s*=\s*["']([^"']+\.js)["']""", html)
    assert assets
    for asset in assets:
        assert asset.startswith("/"), asset


def test_schema_describes_the_bearer_token(schema):
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["type"] == "http"
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    assert {"bearerAuth": []} in schema["paths"][NOTEBOOKS]["post"]["security"]


def test_unknown_api_url_answers_the_error_shape(client):
    reply = client.get("/api/v1/nothing/")
    assert reply.status_code == 404
    assert reply.json() == {"code": "not_found", "message": "No API endpoint at /api/v1/nothing/."}
