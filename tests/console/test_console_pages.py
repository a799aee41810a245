"""The console's pages: the live notebooks list, the New notebook form (the API's
validation, errors beside their fields, a live price), tokens shown once, write-only
datastore secrets, usage as CSV."""

import csv
import html
import io
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from nbcloud.billing.models import BillableInterval
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import State
from nbcloud.projects.models import ApiToken, Datastore, Role, hash_token
from support.factories import make_notebook

from .console_support import person, signed_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner(django_user_model, alpha):
    return signed_in(person(django_user_model, "olga", alpha, Role.OWNER))


def test_the_list_polls_a_cheap_endpoint_that_shows_the_new_state(owner, alpha):
    notebook = make_notebook(alpha, name="train", state=State.QUEUED, labels={"team": "a"})
    page = owner.get("/projects/alpha/").content.decode()
    assert 'hx-get="/projects/alpha/notebooks/rows/"' in page and 'hx-trigger="every 2s"' in page
    assert "QUEUED" in page
    Notebook.objects.filter(pk=notebook.pk).update(
        state=State.RUNNING, url="http://x.localhost/notebooks/x/"
    )
    rows = owner.get("/projects/alpha/notebooks/rows/").content.decode()
    assert rows.startswith('<tbody id="notebook-rows"')
    assert "RUNNING" in rows and "QUEUED" not in rows and ">Open<" in rows
    # Nothing is moving: the table polls slowly.
    assert 'hx-trigger="every 15s"' in rows


def test_the_list_filters_by_state_and_label(owner, alpha):
    make_notebook(alpha, name="vision-run", state=State.RUNNING, labels={"team": "vision"})
    make_notebook(alpha, name="nlp-stopped", state=State.STOPPED, labels={"team": "nlp"})
    body = owner.get("/projects/alpha/?label=team%3Dvision").content.decode()
    assert "vision-run" in body and "nlp-stopped" not in body
    body = owner.get("/projects/alpha/?state=STOPPED").content.decode()
    assert "nlp-stopped" in body and "vision-run" not in body
    body = owner.get("/projects/alpha/?label=%3D%3D").content.decode()
    assert "Label filter" in body


def _queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_the_list_costs_a_bounded_number_of_queries(owner, alpha):
    def add(count: int) -> None:
        now = timezone.now()
        for i in range(count):
            nb = make_notebook(alpha, name=f"nb{Notebook.objects.count()}-{i}", state=State.RUNNING)
            BillableInterval.objects.create(
                notebook=nb,
                project=alpha,
                flavor=nb.flavor,
                units=1,
                unit_price=Decimal("0.01"),
                currency="EUR",
                started_at=now - timedelta(minutes=2, seconds=30),
            )

    add(2)
    few = _queries(owner, "/projects/alpha/")
    add(30)
    many = _queries(owner, "/projects/alpha/")
    assert many == few, f"{few} queries for 2 notebooks, {many} for 32"
    body = owner.get("/projects/alpha/notebooks/rows/").content.decode()
    assert body.count("0.03 EUR") == 32  # three commenced minutes each, not yet ticked


FORM = {
    "name": "first",
    "framework_id": "conda",
    "editor_id": "jupyterlab",
    "unit": "cpu",
    "count": "1",
    "region": "GRA",
    "access": "restricted",
}


def test_the_form_creates_the_notebook_the_api_would(owner, alpha):
    reply = owner.post(
        "/projects/alpha/notebooks/new/",
        {
            **FORM,
            "labels": "team=vision\nstage=dev",
            "env_vars": "EPOCHS=3",
            "git_url": ["https://example.org/demo.git"],
            "git_branch": ["main"],
            "git_mount": ["/workspace/demo"],
            "git_mode": ["RO"],
        },
    )
    notebook = Notebook.objects.get(name="first")
    assert (
        reply.status_code == 302
        and reply["Location"] == f"/projects/alpha/notebooks/{notebook.pk}/"
    )
    assert notebook.state == State.QUEUED and notebook.cpu == 1 and notebook.gpu == 0
    assert notebook.labels == {"team": "vision", "stage": "dev"}
    assert notebook.env_vars == [{"name": "EPOCHS", "value": "3"}]
    assert [v["spec"] for v in notebook.volumes] == [
        "https://example.org/demo.git@main:/workspace/demo:RO"
    ]
    assert notebook.events.get().actor == "olga"


def _field_error(body: str, field_id: str) -> str:
    """The error shown right after the field with this id."""
    after = body[body.index(f'id="{field_id}"') :]
    match = re.search(r'class="field-error"[^>]*>([^<]+)<', after[:3000])
    return match[1] if match else ""


def test_the_api_s_errors_show_beside_their_fields(owner, alpha):
    reply = owner.post(
        "/projects/alpha/notebooks/new/",
        {
            **FORM,
            "name": "-bad",
            "unit": "gpu",
            "count": "9",
            "labels": "no equals sign",
            "env_vars": "PATH=/evil",
            "vol_datastore": ["nope"],
            "vol_container": ["c"],
            "vol_mount": ["/workspace/data"],
            "vol_mode": ["RO"],
            "vol_cache": ["no"],
        },
    )
    assert reply.status_code == 400
    body = html.unescape(reply.content.decode())
    assert "starting with a letter or digit" in _field_error(body, "f-name")
    assert "less than or equal to 4" in _field_error(body, "f-count")
    assert "not NAME=value" in _field_error(body, "f-labels")
    assert "PATH" in _field_error(body, "f-env")
    assert "unknown datastore alias 'nope'" in body
    assert not Notebook.objects.exists()
    # What was typed is kept.
    assert 'value="-bad"' in body and "no equals sign" in body


def test_the_quota_refusal_shows_beside_the_gpu_count(owner, alpha):
    alpha.gpu_quota = 1
    alpha.save()
    reply = owner.post("/projects/alpha/notebooks/new/", {**FORM, "unit": "gpu", "count": "2"})
    assert reply.status_code == 400
    assert "may use 1 GPUs at once" in _field_error(reply.content.decode(), "f-count")


def test_the_price_follows_the_chosen_resources(owner, alpha):
    from nbcloud.catalog.services import catalog

    flavor = catalog().default_flavor("cpu")
    body = owner.post(
        "/projects/alpha/notebooks/new/price/", {"unit": "cpu", "count": "3"}
    ).content.decode()
    per_minute = Decimal(flavor.price_per_minute) * 3
    assert f"{per_minute:.4f}" in body and f"{per_minute * 60:.2f}" in body
    assert f"for 3 CPUs of {flavor.id}" in body
    alpha.gpu_quota = 2
    alpha.save()
    body = owner.post(
        "/projects/alpha/notebooks/new/price/", {"unit": "gpu", "count": "3"}
    ).content.decode()
    assert "2 of 2 GPUs left" in body and "would be refused" in body


def test_a_token_is_shown_once_and_works(owner, alpha):
    body = owner.post(
        "/projects/alpha/tokens/", {"name": "ci", "role": "read", "label_selector": "team=a"}
    ).content.decode()
    value = re.search(r'id="token-value">([^<]+)<', body)[1]
    token = ApiToken.objects.get(key_hash=hash_token(value))
    assert (token.role, token.label_selector, token.project) == ("read", "team=a", alpha)
    assert value not in owner.get("/projects/alpha/tokens/").content.decode()
    renewed = owner.post(f"/projects/alpha/tokens/{token.pk}/renew/").content.decode()
    new_value = re.search(r'id="token-value">([^<]+)<', renewed)[1]
    assert new_value != value and not ApiToken.objects.filter(key_hash=hash_token(value)).exists()
    bad = owner.post("/projects/alpha/tokens/", {"name": "x", "role": "owner"})
    assert bad.status_code == 400 and "is not a valid choice" in bad.content.decode()


def test_datastore_secrets_are_write_only(owner, alpha):
    reply = owner.post(
        "/projects/alpha/datastores/",
        {
            "alias": "lake",
            "type": "s3",
            "endpoint": "http://127.0.0.1:9",
            "access_key": "AK",
            "secret_key": "very-secret",
        },
    )
    assert reply.status_code == 302
    assert Datastore.objects.get(alias="lake").secrets() == {"secret_key": "very-secret"}
    assert "very-secret" not in owner.get("/projects/alpha/datastores/").content.decode()
    bad = owner.post(
        "/projects/alpha/datastores/", {"alias": "lake2", "type": "s3", "secret_key": "second-secret"}
    )
    assert bad.status_code == 400
    assert (
        "required for a s3 datastore" in bad.content.decode()
        and "second-secret" not in bad.content.decode()
    )


def test_usage_downloads_as_csv(owner, alpha):
    from nbcloud.billing.services import tick

    nb = make_notebook(alpha, name="costly", state=State.RUNNING)
    BillableInterval.objects.create(
        notebook=nb,
        project=alpha,
        flavor=nb.flavor,
        units=1,
        unit_price=Decimal("0.5"),
        currency="EUR",
        started_at=timezone.now() - timedelta(minutes=2, seconds=5),
    )
    tick()
    reply = owner.get("/projects/alpha/usage.csv")
    assert reply["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(reply.content.decode())))
    assert [(r["notebook_name"], r["minutes"], Decimal(r["cost"])) for r in rows] == [
        ("costly", "3", Decimal("1.5"))
    ]
    page = owner.get("/projects/alpha/usage/?stack=flavor").content.decode()
    assert 'id="cost-data"' in page and nb.flavor in page
