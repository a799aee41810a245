"""OVHcloud's `ovhai` SDK against nbcloud's /ovhai adapter, in-process.

Every call goes through the SDK's own request building and model parsing;
the answers are nbcloud's native views and services. No worker runs here:
notebooks stay QUEUED, which is enough for everything but the editor.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ovhai.api.capabilities import (
    get_v1_capabilities_flavor,
    get_v1_capabilities_flavor_id,
    get_v1_capabilities_notebook_editor,
    get_v1_capabilities_notebook_editor_id,
    get_v1_capabilities_notebook_framework,
    get_v1_capabilities_notebook_framework_id,
    get_v1_capabilities_quota,
)
from ovhai.api.me import me
from ovhai.api.notebook import (
    notebook_cli_command,
    notebook_create_from_backup,
    notebook_data_sync,
    notebook_delete,
    notebook_edit,
    notebook_edit_label,
    notebook_get,
    notebook_get_all,
    notebook_get_backup,
    notebook_list_backup,
    notebook_new,
    notebook_start,
    notebook_stop,
)
from ovhai.api.token import token_delete, token_get, token_get_all, token_new, token_renew
from ovhai.models import (
    DataStoreVolumeSource,
    DataSyncSpec,
    DataSyncSpecDirection,
    Env,
    LabelUpdate,
    MeTokenKind,
    Notebook,
    NotebookEnv,
    NotebookSpec,
    NotebookSpecLabelsType0,
    NotebookSpecUpdate,
    NotebookSpecUpdateLabelsType0,
    Order,
    PublicGitVolumeSource,
    PublicSwiftVolumeSource,
    Resources,
    Role,
    TokenSpec,
    Volume,
)

from nbcloud.notebooks.models import Backup
from nbcloud.notebooks.models import Notebook as NotebookRow
from nbcloud.projects.models import ApiToken
from support.ovhai_sdk import refused, sdk_client

pytestmark = pytest.mark.django_db
GIB = 1024**3


@pytest.fixture
def as_alice(alice):
    return sdk_client(alice[1])


@pytest.fixture
def as_bob(bob):
    return sdk_client(bob[1])


@pytest.fixture
def as_charlie(charlie):
    return sdk_client(charlie[1])


@pytest.fixture
def as_vision(alice, alpha):
    """An operator token of Alice's limited to notebooks labelled team=vision."""
    _, value = ApiToken.issue(
        project=alpha, user=alice[0], name="vision", role="operator", label_selector="team=vision"
    )
    return sdk_client(value)


def spec(name: str | None = "demo", labels: dict | None = None, **fields) -> NotebookSpec:
    fields.setdefault("resources", Resources(cpu=1))
    body = NotebookSpec(env=NotebookEnv(framework_id="conda", editor_id="jupyterlab"), **fields)
    if name:
        body.name = name
    if labels is not None:
        body.labels = NotebookSpecLabelsType0.from_dict(labels)
    return body


def create(client, **kwargs) -> Notebook:
    notebook = notebook_new.sync(client=client, body=spec(**kwargs))
    assert isinstance(notebook, Notebook), notebook
    return notebook


# Who and what.


def test_me_names_the_token_user_project_role_and_quota(as_alice, as_bob):
    alice = me.sync(client=as_alice)
    assert (alice.name, alice.tenant, alice.role, alice.token_kind) == (
        "alice",
        "alpha",
        Role.AI_TRAINING_OPERATOR,
        MeTokenKind.APP,
    )
    assert alice.quotas.resources.additional_properties == {"GPU": 4}
    assert me.sync(client=as_bob).role == Role.AI_TRAINING_READ


def test_capabilities_are_the_catalogue(as_alice):
    frameworks = get_v1_capabilities_notebook_framework.sync(client=as_alice)
    conda = next(f for f in frameworks if f.id == "conda")
    assert conda.versions == ["py311"] and conda.name == "Conda"
    assert conda.saved_paths == ["/workspace"] and conda.doc_url.startswith("https://")
    one = get_v1_capabilities_notebook_framework_id.sync("pytorch", client=as_alice)
    assert one.id == "pytorch" and "2.14" in one.versions

    editors = get_v1_capabilities_notebook_editor.sync(client=as_alice)
    assert {e.id for e in editors} == {"jupyterlab", "vscode"}
    compatible = get_v1_capabilities_notebook_editor.sync(
        client=as_alice, compatible_with_framework="conda"
    )
    assert {e.id for e in compatible} == {"jupyterlab", "vscode"}
    assert (
        get_v1_capabilities_notebook_editor.sync(
            client=as_alice, compatible_with_framework="no-such-framework"
        )
        == []
    )
    assert get_v1_capabilities_notebook_editor_id.sync("vscode", client=as_alice).name.startswith(
        "VS Code"
    )
    with_jupyter = get_v1_capabilities_notebook_framework.sync(
        client=as_alice, compatible_with_editor="jupyterlab"
    )
    assert len(with_jupyter) == len(frameworks)

    flavors = {f.id: f for f in get_v1_capabilities_flavor.sync(client=as_alice)}
    gpu = flavors["ai1-1-gpu"]
    assert (gpu.type, gpu.default, gpu.max_) == ("gpu", True, 4)
    assert gpu.resources_per_unit.cpu == 13 and gpu.resources_per_unit.memory == 40 * GIB
    assert gpu.gpu_information.gpu_model == "Tesla V100S"
    assert gpu.gpu_information.gpu_memory == 32 * GIB
    cpu = get_v1_capabilities_flavor_id.sync("ai1-1-cpu", client=as_alice)
    assert (cpu.type, cpu.max_, cpu.resources_per_unit.memory) == ("cpu", 12, 4 * GIB)

    quotas = get_v1_capabilities_quota.sync(client=as_alice)
    assert [q.resources.additional_properties for q in quotas] == [{"GPU": 4}]

    error = refused(
        lambda: get_v1_capabilities_flavor_id.sync_detailed("a100-9-gpu", client=as_alice), 404
    )
    assert "a100-9-gpu" in error.message and "ai1-1-cpu" in error.message


def test_no_token_or_a_bad_one_is_401_and_unknown_paths_404(as_alice):
    assert refused(lambda: me.sync_detailed(client=sdk_client("nbc_not-a-token")), 401)
    anonymous = as_alice.get_httpx_client()
    reply = anonymous.get("/v1/notebook", headers={"Authorization": ""})
    assert reply.status_code == 401 and reply.json()["message"]
    assert reply.headers["WWW-Authenticate"] == "Bearer"
    missing = anonymous.get("/v1/job")
    assert missing.status_code == 404 and "/v1/notebook" in missing.json()["message"]


# Notebooks.


def test_create_answers_the_notebook_in_ovh_shape(as_alice):
    nb = notebook_new.sync(
        client=as_alice,
        body=spec(
            name=None,
            labels={"team": "vision"},
            env_vars=[Env(name="GREETING", value="hello")],
            unsecure_http=True,
        ),
    )
    assert isinstance(nb, Notebook)
    assert nb.user == "alice" and nb.created_at and nb.updated_at
    assert nb.spec.name.startswith("conda-jupyterlab-")  # named when the spec does not
    assert nb.spec.env.framework_id == "conda" and nb.spec.env.editor_id == "jupyterlab"
    assert nb.spec.env.framework_version == "py311"
    assert nb.spec.labels.additional_properties == {"team": "vision"}
    assert [(e.name, e.value) for e in nb.spec.env_vars] == [("GREETING", "hello")]
    assert nb.spec.unsecure_http is True and nb.spec.timeout_auto_restart is False
    resources = nb.spec.resources
    assert (resources.flavor, resources.cpu, resources.gpu) == ("ai1-1-cpu", 1, 0)
    assert resources.memory == 4 * GIB and resources.ephemeral_storage == 50 * GIB
    assert nb.spec.additional_properties == {"region": "GRA"}
    assert nb.status.state == "QUEUED"
    assert nb.status.info.code == "WAITING_FOR_CAPACITY" and nb.status.info.message
    assert nb.status.last_started_at is None and nb.status.duration == 0
    row = NotebookRow.objects.get(pk=nb.id)
    assert row.events.get().actor == "alice (token alice-operator)"

    again = notebook_get.sync(nb.id, client=as_alice)
    assert again.to_dict() == nb.to_dict()


def test_a_spec_read_back_can_be_sent_again(as_alice):
    first = create(as_alice, name="original", resources=Resources(gpu=1))
    assert (first.spec.resources.gpu, first.spec.resources.cpu) == (1, 0)
    assert first.spec.resources.gpu_model == "Tesla V100S"
    copy = first.spec
    copy.name = "copy"
    second = notebook_new.sync(client=as_alice, body=copy)
    assert second.spec.resources.to_dict() == first.spec.resources.to_dict()
    assert second.spec.env.to_dict() == first.spec.env.to_dict()


def test_bad_specs_are_refused_naming_the_field_in_ovh_names(as_alice):
    body = spec()
    body.env.framework_id = "no-such-framework"
    error = refused(lambda: notebook_new.sync_detailed(client=as_alice, body=body), 400)
    assert error.message.startswith("env.frameworkId: unknown framework 'no-such-framework'")
    assert "conda" in error.message
    assert list(error.additional_properties["fields"]) == ["env.frameworkId"]

    body = spec(env_vars=[Env(name="1BAD", value="x")])
    error = refused(lambda: notebook_new.sync_detailed(client=as_alice, body=body), 400)
    assert "envVars.0.name" in error.additional_properties["fields"]

    body = spec(resources=Resources(cpu=1, gpu=1))
    error = refused(lambda: notebook_new.sync_detailed(client=as_alice, body=body), 400)
    assert "either gpu or cpu" in error.message
    assert not NotebookRow.objects.exists()


def test_quota_refusal_is_the_native_one(as_alice):
    create(as_alice, name="big", resources=Resources(gpu=4))
    error = refused(
        lambda: notebook_new.sync_detailed(client=as_alice, body=spec(resources=Resources(gpu=1))),
        403,
    )
    assert "may use 4 GPUs at once" in error.message
    assert error.additional_properties["code"] == "quota_exceeded"


def test_list_filters_sorts_and_pages(as_alice):
    for name, team in (("b-one", "vision"), ("a-two", "vision"), ("c-three", "nlp")):
        create(as_alice, name=name, labels={"team": team})
    listed = notebook_get_all.sync(client=as_alice)
    assert [n.spec.name for n in listed.items] == ["b-one", "a-two", "c-three"]
    assert listed.metadata.total == 3 and listed.metadata.page_count == 1

    vision = notebook_get_all.sync(client=as_alice, label_selector="team=vision")
    assert {n.spec.name for n in vision.items} == {"b-one", "a-two"}
    not_vision = notebook_get_all.sync(client=as_alice, label_selector="team!=vision")
    assert [n.spec.name for n in not_vision.items] == ["c-three"]

    by_name = notebook_get_all.sync(client=as_alice, sort="name", order=Order.DESC)
    assert [n.spec.name for n in by_name.items] == ["c-three", "b-one", "a-two"]

    page = notebook_get_all.sync(client=as_alice, sort="name", page=2, size=2)
    assert [n.spec.name for n in page.items] == ["c-three"]
    assert (page.metadata.current_page, page.metadata.page_count) == (2, 2)
    first_page = notebook_get_all.sync(client=as_alice, sort="name", size=2)
    assert "page=2" in first_page.metadata.links.next_

    assert notebook_stop.sync_detailed(by_name.items[0].id, client=as_alice).status_code == 204
    stopped = notebook_get_all.sync(client=as_alice, status_state=["STOPPED"])
    assert [n.spec.name for n in stopped.items] == ["c-three"]
    both = notebook_get_all.sync(client=as_alice, status_state=["STOPPED", "QUEUED"])
    assert both.metadata.total == 3

    error = refused(
        lambda: notebook_get_all.sync_detailed(client=as_alice, status_state=["SLEEPING"]), 400
    )
    assert "SLEEPING" in error.message and "RUNNING" in error.message
    error = refused(lambda: notebook_get_all.sync_detailed(client=as_alice, sort="colour"), 400)
    assert "createdAt" in error.message
    error = refused(
        lambda: notebook_get_all.sync_detailed(client=as_alice, label_selector="team=~x"), 400
    )
    assert error.message.startswith("labelSelector")


def test_label_edit_and_lifecycle_actions(as_alice):
    nb = create(as_alice, labels={"team": "vision"})
    for update, expected in (
        (LabelUpdate(name="stage", value="dev"), {"team": "vision", "stage": "dev"}),
        (LabelUpdate(name="team", value="nlp"), {"team": "nlp", "stage": "dev"}),
        (LabelUpdate(name="stage"), {"team": "nlp"}),
    ):
        response = notebook_edit_label.sync_detailed(nb.id, client=as_alice, body=update)
        assert response.status_code == 204, response.content
        labels = notebook_get.sync(nb.id, client=as_alice).spec.labels
        assert labels.additional_properties == expected
    error = refused(
        lambda: notebook_edit_label.sync_detailed(
            nb.id, client=as_alice, body=LabelUpdate(name="nbcloud/x", value="y")
        ),
        400,
    )
    assert "reserved" in error.message

    # While queued, only labels and the restart flag may change: the native rule.
    error = refused(
        lambda: notebook_edit.sync_detailed(
            nb.id, client=as_alice, body=NotebookSpecUpdate(unsecure_http=True)
        ),
        400,
    )
    assert "STOPPED or FAILED" in error.message
    assert error.additional_properties["code"] == "invalid_state"

    assert notebook_stop.sync_detailed(nb.id, client=as_alice).status_code == 204
    assert notebook_get.sync(nb.id, client=as_alice).status.state == "STOPPED"
    edited = notebook_edit.sync_detailed(
        nb.id,
        client=as_alice,
        body=NotebookSpecUpdate(
            unsecure_http=True, labels=NotebookSpecUpdateLabelsType0.from_dict({"team": "x"})
        ),
    )
    assert edited.status_code == 204, edited.content
    after = notebook_get.sync(nb.id, client=as_alice)
    assert after.spec.unsecure_http is True
    assert after.spec.labels.additional_properties == {"team": "x"}
    error = refused(
        lambda: notebook_edit.sync_detailed(
            nb.id, client=as_alice, body=NotebookSpecUpdate(resources=Resources(cpu=2))
        ),
        400,
    )
    assert "cannot change resources" in error.message

    error = refused(lambda: notebook_stop.sync_detailed(nb.id, client=as_alice), 400)
    assert "STOPPED" in error.message
    assert notebook_start.sync_detailed(nb.id, client=as_alice).status_code == 204
    assert notebook_get.sync(nb.id, client=as_alice).status.state == "QUEUED"

    deleted = notebook_delete.sync_detailed(nb.id, client=as_alice, force=True)
    assert deleted.status_code == 204
    assert NotebookRow.objects.get(pk=nb.id).state == "DELETED"
    error = refused(lambda: notebook_get.sync_detailed(nb.id, client=as_alice), 404)
    assert error.additional_properties["code"] == "not_found"


def test_read_tokens_read_and_nothing_more(as_alice, as_bob):
    nb = create(as_alice)
    assert notebook_get.sync(nb.id, client=as_bob).spec.name == "demo"
    assert notebook_get_all.sync(client=as_bob).metadata.total == 1
    for call in (
        lambda: notebook_new.sync_detailed(client=as_bob, body=spec()),
        lambda: notebook_stop.sync_detailed(nb.id, client=as_bob),
        lambda: notebook_delete.sync_detailed(nb.id, client=as_bob),
        lambda: notebook_edit_label.sync_detailed(
            nb.id, client=as_bob, body=LabelUpdate(name="a", value="b")
        ),
    ):
        error = refused(call, 403)
        assert "operator role" in error.message
    assert NotebookRow.objects.get(pk=nb.id).state == "QUEUED"


def test_other_projects_and_label_scoped_tokens_see_only_their_notebooks(
    as_alice, as_charlie, as_vision
):
    vision = create(as_alice, name="vision", labels={"team": "vision"})
    other = create(as_alice, name="other", labels={"team": "nlp"})
    assert notebook_get_all.sync(client=as_charlie).items == []
    refused(lambda: notebook_get.sync_detailed(vision.id, client=as_charlie), 404)
    refused(lambda: notebook_stop.sync_detailed(vision.id, client=as_charlie), 404)

    scoped = as_vision
    assert [n.id for n in notebook_get_all.sync(client=scoped).items] == [vision.id]
    refused(lambda: notebook_get.sync_detailed(other.id, client=scoped), 404)
    made = notebook_new.sync(client=scoped, body=spec(name="made"))
    assert made.spec.labels.additional_properties == {"team": "vision"}
    error = refused(
        lambda: notebook_edit_label.sync_detailed(
            vision.id, client=scoped, body=LabelUpdate(name="team", value="nlp")
        ),
        403,
    )
    assert "out of this token's reach" in error.message


def test_volumes_in_ovh_object_form(as_alice, alice_api):
    datastore = {
        "alias": "ovh-gra",
        "type": "s3",
        "endpoint": "https://s3.gra.io.cloud.ovh.net",
        "region": "gra",
        "access_key": "AKIA-TEST",
        "secret_key": "secret-123",
    }
    assert (
        alice_api.post("/api/v1/projects/alpha/datastores/", datastore, format="json").status_code
        == 201
    )
    volumes = [
        Volume(
            mount_path="/workspace/data",
            permission="RW",
            cache=True,
            data_store=DataStoreVolumeSource(alias="ovh-gra", container="bucket", prefix="raw"),
        ),
        Volume(
            mount_path="/workspace/code",
            permission="RO",
            public_git=PublicGitVolumeSource(url="https://example.org/team/code.git@main"),
        ),
    ]
    nb = create(as_alice, volumes=volumes)
    data, code = nb.spec.volumes
    assert (data.mount_path, data.permission, data.cache) == ("/workspace/data", "RW", True)
    assert data.data_store.to_dict() == {"alias": "ovh-gra", "container": "bucket", "prefix": "raw"}
    assert code.public_git.url == "https://example.org/team/code.git@main"
    assert code.permission == "RO"
    assert [v.mount_path for v in nb.status.volumes] == ["/workspace/data", "/workspace/code"]
    row = NotebookRow.objects.get(pk=nb.id)
    assert [v["spec"] for v in row.volumes] == [
        "bucket@ovh-gra/raw:/workspace/data:RW:cache",
        "https://example.org/team/code.git@main:/workspace/code:RO",
    ]

    unknown = [
        Volume(
            mount_path="/workspace/x",
            permission="RO",
            data_store=DataStoreVolumeSource(alias="nowhere", container="c"),
        )
    ]
    error = refused(
        lambda: notebook_new.sync_detailed(client=as_alice, body=spec(volumes=unknown)), 400
    )
    assert "unknown datastore alias 'nowhere'" in error.message
    swift = [
        Volume(
            mount_path="/workspace/x",
            permission="RO",
            public_swift=PublicSwiftVolumeSource(url="https://x"),
        )
    ]
    error = refused(
        lambda: notebook_new.sync_detailed(client=as_alice, body=spec(volumes=swift)), 400
    )
    assert "publicSwift" in error.message and "dataStore" in error.message


def test_backups_are_listed_read_and_forked(as_alice, as_bob):
    nb = create(as_alice, name="source", labels={"team": "vision"})
    row = NotebookRow.objects.get(pk=nb.id)
    older = Backup.objects.create(
        notebook=row, storage_name="b/1.tar.zst", size=10, sha256="a" * 64, workspace_size=20
    )
    newer = Backup.objects.create(
        notebook=row, storage_name="b/2.tar.zst", size=11, sha256="b" * 64, workspace_size=21
    )
    backups = notebook_list_backup.sync(nb.id, client=as_alice)
    assert [b.id for b in backups.items] == [str(newer.pk), str(older.pk)]
    assert backups.metadata.total == 2
    one = notebook_get_backup.sync(nb.id, str(older.pk), client=as_alice)
    assert one.id == str(older.pk) and one.mount_path == "/workspace"
    assert one.created_at == older.created_at
    refused(
        lambda: notebook_get_backup.sync_detailed(
            nb.id, "0" * 8 + "-0000-0000-0000-" + "0" * 12, client=as_alice
        ),
        404,
    )

    error = refused(
        lambda: notebook_get_backup.sync_detailed(nb.id, "not-a-uuid", client=as_alice), 404
    )
    assert error.message == "This notebook has no backup not-a-uuid."
    refused(
        lambda: notebook_create_from_backup.sync_detailed(nb.id, str(older.pk), client=as_bob),
        403,
    )
    fork = notebook_create_from_backup.sync(nb.id, str(older.pk), client=as_alice)
    assert isinstance(fork, Notebook) and fork.id != nb.id
    assert fork.spec.name == "source-fork" and fork.status.state == "QUEUED"
    assert fork.spec.labels.additional_properties == {"team": "vision"}
    forked = NotebookRow.objects.get(pk=fork.id)
    assert forked.forked_from_id == older.pk
    assert forked.backups.get().storage_name == "b/1.tar.zst"


def test_datasync_is_refused_as_the_native_api_refuses_it(as_alice, as_bob):
    nb = create(as_alice)
    push = DataSyncSpec(direction=DataSyncSpecDirection.PUSH)
    error = refused(
        lambda: notebook_data_sync.sync_detailed(nb.id, client=as_alice, body=push), 400
    )
    assert "RUNNING" in error.message
    pull = DataSyncSpec(direction=DataSyncSpecDirection.PULL)
    error = refused(
        lambda: notebook_data_sync.sync_detailed(nb.id, client=as_alice, body=pull), 400
    )
    assert "'pull' is not available" in error.message
    refused(lambda: notebook_data_sync.sync_detailed(nb.id, client=as_bob, body=push), 403)


def test_command_is_the_nbc_command_line(as_alice):
    body = spec(
        name="demo",
        labels={"team": "vision"},
        env_vars=[Env(name="GREETING", value="hello world")],
        unsecure_http=True,
    )
    command = notebook_cli_command.sync(client=as_alice, body=body)
    assert command.command == (
        "nbc notebook run conda jupyterlab --framework-version py311 --flavor ai1-1-cpu "
        "--cpu 1 --name demo -l team=vision -e 'GREETING=hello world' --unsecure-http"
    )
    assert not NotebookRow.objects.exists()
    body.env.editor_id = "emacs"
    error = refused(lambda: notebook_cli_command.sync_detailed(client=as_alice, body=body), 400)
    assert "env.editorId" in error.message


# Tokens.


def test_tokens_are_created_listed_renewed_and_deleted(as_alice, alice):
    created = token_new.sync(
        client=as_alice,
        body=TokenSpec(name="ci", role="ai_training_read", label_selector="team=vision"),
    )
    assert created.spec.name == "ci" and created.spec.role == "ai_training_read"
    assert created.spec.label_selector == "team=vision"
    value = created.status.value
    assert value.startswith("nbc_")
    new_client = sdk_client(value)
    assert me.sync(client=new_client).role == Role.AI_TRAINING_READ

    listed = token_get_all.sync(client=as_alice)
    assert {t.spec.name for t in listed.items} == {"alice-operator", "ci"}
    assert all(t.status.value is None for t in listed.items)
    got = token_get.sync(created.id, client=as_alice)
    assert got.id == created.id and got.status.value is None

    renewed = token_renew.sync(created.id, client=as_alice)
    assert renewed.status.value.startswith("nbc_") and renewed.status.value != value
    refused(lambda: me.sync_detailed(client=new_client), 401)
    assert me.sync(client=sdk_client(renewed.status.value)).name == "alice"

    assert token_delete.sync_detailed(created.id, client=as_alice).status_code == 204
    refused(lambda: token_get.sync_detailed(created.id, client=as_alice), 404)
    refused(lambda: me.sync_detailed(client=sdk_client(renewed.status.value)), 401)


def test_a_read_token_cannot_create_tokens(as_bob):
    error = refused(
        lambda: token_new.sync_detailed(
            client=as_bob, body=TokenSpec(name="escalate", role="ai_training_operator")
        ),
        403,
    )
    assert "operator role" in error.message
    assert error.additional_properties["code"] == "forbidden"
    assert not ApiToken.objects.filter(name="escalate").exists()


def test_bad_token_specs_and_broader_selectors_are_refused(as_alice, as_vision):
    error = refused(
        lambda: token_new.sync_detailed(client=as_alice, body=TokenSpec(name="x", role="admin")),
        400,
    )
    assert error.message.startswith("role:")
    error = refused(
        lambda: token_new.sync_detailed(
            client=as_vision, body=TokenSpec(name="wider", role="ai_training_operator")
        ),
        403,
    )
    assert "team=vision" in error.message


# The prefix.

RESOLVE = (
    "import django; django.setup(); from django.urls import resolve; "
    "print(resolve('/{path}').func.cls.__name__)"
)


def _django(code: str, prefix: str):
    root = Path(__file__).resolve().parents[2]
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env={
            **os.environ,
            "PYTHONPATH": "platform:.",
            "DJANGO_SETTINGS_MODULE": "nbcloud.settings",
            "NBCLOUD_OVHAI_PREFIX": prefix,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_prefix_is_a_setting():
    done = _django(RESOLVE.format(path="ai/ovh/v1/notebook"), "/ai/ovh/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "NotebookView"
    for bad in ("", "two words", "../x"):
        done = _django("import django; django.setup()", bad)
        assert done.returncode != 0
        assert f"NBCLOUD_OVHAI_PREFIX={bad.strip('/')!r} is not a URL path" in done.stderr
