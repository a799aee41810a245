"""A token's label selector and expiry bound everything it reads, not only notebooks.

Two notebooks of project alpha, `team=vision` and `team=nlp`, each with billed
minutes and samples. A token scoped to one team sees that team's usage rows
and metrics only; a read token whose selector matches nothing sees no usage at
all. Presigned URLs (signed for a real S3 API, moto_server on loopback) live at
most an hour, never past the asking token's expiry, and a scoped token reaches
only the containers its notebooks mount.
"""

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from nbcloud.billing import services as billing
from nbcloud.monitoring.models import NotebookSample
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import State
from nbcloud.projects.models import ApiToken, Role
from support.factories import make_s3_datastore

pytestmark = pytest.mark.django_db
USAGE = "/api/v1/projects/alpha/usage/"
MARCH = {"from": "2026-03-01", "to": "2026-04-01"}
BUCKET = "selector-leaks"
OTHER_BUCKET = "selector-other"


def _notebook(project, name, team, volumes=()) -> Notebook:
    return Notebook.objects.create(
        project=project,
        name=name,
        framework_id="conda",
        framework_version="py311",
        editor_id="jupyterlab",
        flavor="ai1-1-cpu",
        cpu=1,
        region="GRA",
        state=State.STOPPED,
        labels={"team": team},
        volumes=list(volumes),
    )


def _client(project, user, *, role=Role.READ, selector="", expires_at=None) -> APIClient:
    _, value = ApiToken.issue(
        project=project,
        user=user,
        role=role,
        name=f"t-{role}-{selector or 'all'}-{expires_at}",
        label_selector=selector,
        expires_at=expires_at,
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {value}")
    return client


@pytest.fixture
def teams(alpha):
    vision = _notebook(
        alpha,
        "vision",
        "vision",
        volumes=[
            {
                "type": "object",
                "container": BUCKET,
                "alias": "lake",
                "prefix": "",
                "mount_path": "/workspace/data",
                "permission": "RO",
                "cache": False,
                "spec": f"{BUCKET}@lake:/workspace/data:RO",
            }
        ],
    )
    nlp = _notebook(alpha, "nlp", "nlp")
    for notebook in (vision, nlp):
        start = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
        billing.open_interval(notebook, start)
        billing.close_interval(notebook, start + timedelta(minutes=3))
        NotebookSample.objects.create(notebook=notebook, host="h", cpu_cores=0.5)
    return vision, nlp


def _names(reply) -> set[str]:
    assert reply.status_code == 200, reply.content
    return {row["notebook_name"] for row in reply.json()["rows"]}


def test_usage_rows_follow_the_label_selector(alpha, alice, bob, teams):
    vision, nlp = teams
    bob_user = bob[0]
    unscoped = _client(alpha, bob_user)
    assert _names(unscoped.get(USAGE, MARCH)) == {"vision", "nlp"}
    only_nlp = _client(alpha, bob_user, selector="team=nlp")
    assert _names(only_nlp.get(USAGE, MARCH)) == {"nlp"}
    not_vision = _client(alpha, bob_user, selector="team!=vision")
    assert _names(not_vision.get(USAGE, MARCH)) == {"nlp"}
    for group_by in ["notebook", "day", "flavor"]:
        nothing = _client(alpha, bob_user, selector="team=nobody")
        reply = nothing.get(USAGE, {**MARCH, "group_by": group_by})
        assert reply.status_code == 200 and reply.json()["rows"] == [], (group_by, reply.content)
    csv = _client(alpha, bob_user, selector="team=nobody").get(USAGE, {**MARCH, "format": "csv"})
    assert csv.status_code == 200 and "vision" not in csv.content.decode()
    # One notebook's usage: the other's is not found.
    own = only_nlp.get(f"/api/v1/projects/alpha/notebooks/{nlp.pk}/usage/", MARCH)
    assert own.status_code == 200 and own.json()["rows"][0]["minutes"] == 3
    other = only_nlp.get(f"/api/v1/projects/alpha/notebooks/{vision.pk}/usage/", MARCH)
    assert other.status_code == 404
    # A member signed in (no selector) sees both.
    session = APIClient()
    session.force_login(alice[0])
    assert _names(session.get(USAGE, MARCH)) == {"vision", "nlp"}


def test_the_project_cost_counts_only_the_notebooks_a_scoped_token_reaches(alpha, bob, teams):
    vision, nlp = teams
    start = timezone.now() - timedelta(minutes=30)
    billing.open_interval(vision, start)
    billing.close_interval(vision, start + timedelta(minutes=10))
    billing.open_interval(nlp, start)
    billing.close_interval(nlp, start + timedelta(minutes=2))
    from nbcloud.billing.models import Budget

    Budget.objects.create(project=alpha, monthly_amount="100.00", currency="EUR")

    def cost(client) -> tuple[str, dict]:
        reply = client.get("/api/v1/projects/alpha/")
        assert reply.status_code == 200, reply.content
        body = reply.json()
        return (body["cost_to_date"][0]["amount"] if body["cost_to_date"] else "0"), body["budget"]

    whole, budget = cost(_client(alpha, bob[0]))
    only_nlp, scoped_budget = cost(_client(alpha, bob[0], selector="team=nlp"))
    nothing, _ = cost(_client(alpha, bob[0], selector="team=nobody"))
    assert float(whole) == pytest.approx(float(only_nlp) * 6)  # 12 minutes against 2
    assert nothing == "0"
    assert "spent" in budget and "spent" not in scoped_budget
    assert scoped_budget["state"] == budget["state"]


def test_notebook_metrics_follow_the_label_selector(alpha, bob, teams):
    vision, nlp = teams
    only_nlp = _client(alpha, bob[0], selector="team=nlp")
    mine = only_nlp.get(f"/api/v1/projects/alpha/notebooks/{nlp.pk}/metrics/")
    assert mine.status_code == 200 and mine.json()["samples"][0]["cpu_cores"] == 0.5
    theirs = only_nlp.get(f"/api/v1/projects/alpha/notebooks/{vision.pk}/metrics/")
    assert theirs.status_code == 404
    assert "0.5" not in theirs.content.decode()


@pytest.fixture
def lake(alpha, s3_endpoint, s3_bucket):
    s3_bucket(BUCKET)
    s3_bucket(OTHER_BUCKET)
    store = make_s3_datastore(alpha, s3_endpoint, alias="lake")
    return store


def _presign(client, container=BUCKET, **body):
    url = f"/api/v1/projects/alpha/datastores/lake/containers/{container}/objects/presign/"
    return client.post(url, {"method": "get", "keys": ["k"], **body}, format="json")


def _signed_lifetime(reply) -> int:
    assert reply.status_code == 200, reply.content
    url = reply.json()["urls"][0]["url"]
    return int(parse_qs(urlsplit(url).query)["X-Amz-Expires"][0])


def test_presigned_urls_live_an_hour_at_most_and_never_past_the_token(alpha, bob, lake):
    reader = _client(alpha, bob[0])
    assert _signed_lifetime(_presign(reader)) == 3600
    too_long = _presign(reader, expires_in=7 * 86400)
    assert too_long.status_code == 400 and "expires_in" in too_long.json()["fields"]
    short = _presign(reader, expires_in=120)
    assert short.json()["expires_in"] == 120 and _signed_lifetime(short) == 120

    ten_minutes = _client(alpha, bob[0], expires_at=timezone.now() + timedelta(minutes=10))
    reply = _presign(ten_minutes)
    assert 590 <= reply.json()["expires_in"] <= 600
    assert _signed_lifetime(reply) == reply.json()["expires_in"]


def test_multipart_urls_never_outlive_the_token(alpha, alice, lake):
    soon = _client(
        alpha, alice[0], role=Role.OPERATOR, expires_at=timezone.now() + timedelta(minutes=5)
    )
    url = f"/api/v1/projects/alpha/datastores/lake/containers/{BUCKET}/objects/multipart/"
    reply = soon.post(url, {"key": "big", "size": 20 * 2**20}, format="json")
    assert reply.status_code == 201, reply.content
    assert 290 <= reply.json()["expires_in"] <= 300
    part_url = reply.json()["parts"][0]["url"]
    assert int(parse_qs(urlsplit(part_url).query)["X-Amz-Expires"][0]) <= 300


def test_a_scoped_token_reaches_only_the_containers_its_notebooks_mount(alpha, bob, teams, lake):
    vision_reader = _client(alpha, bob[0], selector="team=vision")
    assert _signed_lifetime(_presign(vision_reader)) == 3600
    listing = vision_reader.get(
        f"/api/v1/projects/alpha/datastores/lake/containers/{BUCKET}/objects/"
    )
    assert listing.status_code == 200, listing.content

    for client, container in [
        (vision_reader, OTHER_BUCKET),  # no notebook of its mounts it
        (_client(alpha, bob[0], selector="team=nlp"), BUCKET),  # nlp mounts nothing
        (_client(alpha, bob[0], selector="team=nobody"), BUCKET),
    ]:
        refused = _presign(client, container)
        assert refused.status_code == 404, refused.content
        assert "label selector" in refused.json()["message"]
        assert "urls" not in refused.json()
    # Unscoped tokens and members reach every container of the project.
    assert _presign(_client(alpha, bob[0]), OTHER_BUCKET).status_code == 200
