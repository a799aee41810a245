"""The console's forms under any input: every POST answers a page, a redirect or a
refusal (4xx), never a server error.

Each form is posted by its project's owner (who may use every form) with generated
values for its own fields (and for none, and for fields it does not know): text
with the characters that mean something to its parsers (`=`, `@`, `:`, `/`, new
lines, NUL, digits that are not ASCII). The objects a form acts on (a notebook, a
token, a datastore, a member, an invitation) exist, so the fuzz reaches past the
lookups; each example runs in a savepoint that is rolled back.
"""

import string

import pytest
from django.db import transaction
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nbcloud.console.models import Invitation
from nbcloud.notebooks.models import Notebook
from nbcloud.projects.models import ApiToken, Datastore, Membership, Role

from .console_support import person, signed_in

pytestmark = pytest.mark.django_db

FUZZ = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Each form's fields, as its template names them.
FORMS = {
    "notebooks/new/": [
        "name",
        "framework_id",
        "framework_version",
        "editor_id",
        "unit",
        "count",
        "flavor",
        "region",
        "labels",
        "env_vars",
        "access",
        "ssh_keys",
        "idle_timeout",
        "max_runtime",
        "vol_datastore",
        "vol_container",
        "vol_prefix",
        "vol_mount",
        "vol_mode",
        "vol_cache",
        "git_url",
        "git_branch",
        "git_mount",
        "git_mode",
    ],
    "notebooks/new/price/": ["unit", "count", "flavor"],
    "notebooks/{nb}/start/": ["next"],
    "notebooks/{nb}/stop/": ["next"],
    "notebooks/{nb}/share/": ["username", "role", "revoke"],
    "notebooks/{nb}/delete/": ["next"],
    "tokens/": ["name", "role", "label_selector", "expires_at"],
    "tokens/{token}/renew/": ["expires_at"],
    "datastores/": [
        "alias",
        "type",
        "endpoint",
        "region",
        "access_key",
        "secret_key",
        "host",
        "username",
        "password",
        "ssh_private_key",
    ],
    "datastores/store/delete/": [],
    "members/": ["username", "role", "note"],
    "members/{member}/": ["role", "remove"],
    "invitations/{invitation}/delete/": [],
}

SPECIAL = "=@:/.-_ \n\t\x00é²٣中"
values = st.one_of(
    st.sampled_from(
        [
            "",
            "1",
            "0",
            "-1",
            "²",
            "٣",
            "99999999999999999999",
            "gpu",
            "cpu",
            "read",
            "owner",
            "operator",
            "conda",
            "jupyterlab",
            "yes",
            "open",
            "RW",
            "s3",
            "git",
            "2030-01-01",
            "/workspace/data",
            "a=b\nc",
            "https://example.com/r.git",
        ]
    ),
    st.text(alphabet=string.ascii_letters + string.digits + SPECIAL, max_size=30),
)


def form_data(fields: list[str]):
    known = st.dictionaries(st.sampled_from(fields), values) if fields else st.just({})
    unknown = st.dictionaries(
        st.text(string.ascii_lowercase + "_", min_size=1, max_size=8), values, max_size=2
    )
    return st.tuples(known, unknown).map(lambda parts: {**parts[1], **parts[0]})


@pytest.fixture
def owner(django_user_model, alpha):
    return person(django_user_model, "olga", alpha, Role.OWNER)


@pytest.fixture
def objects(django_user_model, alpha, owner):
    """What the forms act on, by the name their paths use."""
    notebook = Notebook.objects.create(
        project=alpha,
        name="n",
        framework_id="conda",
        framework_version="py311",
        editor_id="jupyterlab",
        flavor="ai1-1-cpu",
        cpu=1,
        region="GRA",
        state="STOPPED",
    )
    token, _ = ApiToken.issue(project=alpha, user=owner, role=Role.READ, name="t")
    store = Datastore(project=alpha, alias="store", type="s3", endpoint="http://127.0.0.1:9")
    store.set_secrets({"secret_key": "secret"})
    store.save()
    member = person(django_user_model, "mia", alpha, Role.READ)
    invitation, _ = Invitation.issue(project=alpha, role=Role.READ, created_by=owner)
    return {
        "nb": notebook.pk,
        "token": token.pk,
        "member": Membership.objects.get(project=alpha, user=member).user_id,
        "invitation": invitation.pk,
    }


@pytest.mark.parametrize("form", FORMS)
def test_a_console_form_never_answers_a_server_error(form, owner, objects):
    client = signed_in(owner)
    url = "/projects/alpha/" + form.format(**objects)

    @given(form_data(FORMS[form]))
    @FUZZ
    @example({"unit": "cpu", "count": "²"})
    @example(
        {
            "name": "a",
            "framework_id": "conda",
            "editor_id": "jupyterlab",
            "vol_mount": "/workspace/\x00",
        }
    )
    def post(data):
        with transaction.atomic():
            reply = client.post(url, data)
            transaction.set_rollback(True)
        assert reply.status_code < 500, (url, data, reply.status_code)

    post()


def test_what_the_fuzz_found_answers_the_form_not_a_server_error(owner, objects):
    """Each was a 500: a count in digits that int() refuses ('²'), a `next` that
    `redirect` took for a view name, a user name with a NUL (PostgreSQL refuses it)."""
    client = signed_in(owner)
    price = client.post("/projects/alpha/notebooks/new/price/", {"unit": "cpu", "count": "²"})
    assert price.status_code == 200
    stop = client.post(f"/projects/alpha/notebooks/{objects['nb']}/start/", {"next": "1"})
    assert stop.status_code == 302 and stop["Location"] == "/projects/alpha/"
    share = client.post(
        f"/projects/alpha/notebooks/{objects['nb']}/share/", {"username": "mi\x00a", "role": "read"}
    )
    assert share.status_code == 302
    assert "no NUL" in client.get(share["Location"]).content.decode()
