"""The volume parser (object storage and git URLs) under any input.

Whatever text or object a user sends as a volume, `parse_volume` either returns a
volume whose fields keep the documented rules (docs/api.md, Data) or raises the
parser's own ValidationError with a message; never another exception. A parsed
volume survives the round trip through its object form and its canonical string.
Through the API (the native one and OVH's) any such volume answers 201 or 400,
never a server error.
"""

import string
from posixpath import normpath

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nbcloud.notebooks.spec import WORKSPACE, parse_volume

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,  # the same examples every run: CI never flakes on a new one
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
API_FUZZ = settings(FUZZ, max_examples=60)

# Pieces of volume strings: valid ones, and the characters that have a meaning
# in the syntax or that a file system or a database treats apart.
SPECIAL = "@:/.\\ \t\n\x00\x7f~é中-_"
piece = st.text(alphabet=string.ascii_letters + string.digits + SPECIAL, max_size=12)
mounts = st.one_of(
    st.sampled_from(
        ["/workspace/data", "/workspace/a/b/", "/workspace", "/workspace/../etc", "/etc/x", "/"]
    ),
    st.builds("/workspace/{}".format, piece),
    piece,
)
permissions = st.one_of(st.sampled_from(["RO", "RW", "RWD", "ro", "rwd", "X", ""]), piece)
object_strings = st.builds(
    "{}@{}{}:{}{}{}".format,
    st.one_of(st.just("bucket"), piece),
    st.one_of(st.just("store"), piece),
    st.one_of(st.just(""), st.builds("/{}".format, piece)),
    mounts,
    st.one_of(st.just(""), st.builds(":{}".format, permissions)),
    st.sampled_from(["", ":cache", ":CACHE", ":cache:x"]),
)
git_strings = st.builds(
    "{}{}{}/{}.git{}:{}{}".format,
    st.sampled_from(["https://", "http://", "git://", "ssh://", "ssh://git@", "ftp://", ""]),
    st.one_of(st.just("github.com"), piece),
    st.sampled_from(["", ":22", ":x", ":"]),
    st.one_of(st.just("me/project"), piece),
    st.one_of(st.just(""), st.builds("@{}".format, piece)),
    mounts,
    st.one_of(st.just(""), st.builds(":{}".format, permissions)),
)
volume_strings = st.one_of(object_strings, git_strings, st.text(max_size=80))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20))
volume_objects = st.one_of(
    st.fixed_dictionaries(
        {"container": piece, "alias": piece, "mount_path": mounts},
        optional={"prefix": piece, "permission": permissions, "cache": json_scalars},
    ),
    st.fixed_dictionaries(
        {"url": st.one_of(git_strings, piece), "mount_path": mounts},
        optional={"branch": piece, "permission": permissions},
    ),
    st.dictionaries(st.sampled_from(["spec", "url", "alias", "mount_path"]), json_scalars),
)
volumes = st.one_of(volume_strings, volume_objects, json_scalars)

ALIAS_CHARS = set(string.ascii_letters + string.digits + "-_.")


def parse_or_refuse(raw):
    """The parsed volume, or None when refused with the parser's own error and a message."""
    try:
        return parse_volume(raw).to_dict()
    except ValidationError as exc:
        assert exc.messages and all(m.strip() for m in exc.messages), exc
        return None


def assert_keeps_the_rules(volume: dict) -> None:
    mount = volume["mount_path"]
    assert mount.startswith(WORKSPACE + "/") and mount != WORKSPACE + "/"
    assert normpath(mount) == mount, "mount path is normalised"
    assert ".." not in mount.split("/")
    for field, value in volume.items():
        if isinstance(value, str):
            assert "\x00" not in value, f"NUL in {field}"
    if volume["type"] == "git":
        assert set(volume) == {"type", "url", "branch", "mount_path", "permission", "spec"}
        assert volume["permission"] in ("RO", "RW")
        assert volume["url"].startswith(("https://", "http://", "git://", "ssh://"))
        assert volume["url"].endswith(".git")
        assert not any(c in volume["branch"] for c in ": \t\n")
    else:
        assert volume["type"] == "object"
        assert volume["permission"] in ("RO", "RW", "RWD")
        assert isinstance(volume["cache"], bool)
        assert volume["container"] and not set(volume["container"]) & set("@:/ \t\n")
        alias = volume["alias"]
        assert alias[0].isascii() and alias[0].isalnum() and set(alias) <= ALIAS_CHARS
        assert not set(volume["prefix"]) & set(": \t\n")


def assert_round_trips(volume: dict) -> None:
    """Its object form (what OVH's API and `nbc` send) and canonical string parse back the same."""
    fields = {k: v for k, v in volume.items() if k != "spec"}
    again = parse_volume(fields).to_dict()
    assert {k: v for k, v in again.items() if k != "spec"} == fields
    assert parse_volume(again["spec"]).to_dict() == again


@given(volumes)
@FUZZ
@example("bucket@store/prefix:/workspace/data:RWD:cache")
@example("https://github.com/me/project.git@main:/workspace/project:RW")
@example("ssh://git@example.com:2222/srv/repo.git:/workspace/repo")
@example("bucket@store:/workspace/d\x00ta:RW")
@example("https://example.com/r\x00.git:/workspace/r")
@example({"url": "https://example.com/r.git", "branch": "dev", "mount_path": "/workspace/r/"})
def test_a_volume_parses_within_the_rules_or_is_refused_with_a_message(raw):
    volume = parse_or_refuse(raw)
    if volume is not None:
        assert_keeps_the_rules(volume)
        assert_round_trips(volume)


def test_the_fuzz_reaches_both_kinds_of_volume():
    """The strategies are worth something only if they make volumes of both kinds."""
    kinds = set()

    @given(volume_strings)
    @settings(FUZZ, max_examples=200)
    def collect(raw):
        if volume := parse_or_refuse(raw):
            kinds.add(volume["type"])

    collect()
    assert kinds == {"git", "object"}


# Through the API: a fuzzed volume is 201 or 400, never a server error.

NOTEBOOKS = "/api/v1/projects/alpha/notebooks/"


@pytest.fixture
def store(alice_api):
    """An s3 datastore `store`, so that object volumes on it get past the alias check."""
    reply = alice_api.post(
        "/api/v1/projects/alpha/datastores/",
        {
            "alias": "store",
            "type": "s3",
            "endpoint": "http://127.0.0.1:9",
            "region": "us-east-1",
            "access_key": "key",
            "secret_key": "secret",
        },
        format="json",
    )
    assert reply.status_code == 201, reply.content
    return "store"


def _created_or_refused(api, url: str, body: dict) -> None:
    with transaction.atomic():  # each example starts from the same rows
        reply = api.post(url, body, format="json")
        transaction.set_rollback(True)
    assert reply.status_code in (200, 201, 400), (reply.status_code, reply.content[:500])
    if reply.status_code == 400:
        assert reply.json()["message"], reply.content


@pytest.mark.django_db
@given(st.lists(volumes, max_size=3))
@API_FUZZ
@example(["bucket@store:/workspace/d\x00ta:RW"])
@example(["https://example.com/r\x00.git:/workspace/r"])
@example([{"container": "bucket", "alias": "store", "mount_path": "/workspace/a\x00"}])
def test_creating_a_notebook_with_fuzzed_volumes_is_201_or_400(alice_api, store, fuzzed):
    body = {
        "name": "fuzz",
        "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
        "resources": {"cpu": 1},
        "volumes": fuzzed,
    }
    _created_or_refused(alice_api, NOTEBOOKS, body)


ovh_volumes = st.one_of(
    volumes,
    st.fixed_dictionaries(
        {
            "mountPath": mounts,
            "dataStore": st.one_of(
                st.fixed_dictionaries(
                    {"alias": st.one_of(st.just("store"), piece), "container": piece},
                    optional={"prefix": piece},
                ),
                json_scalars,
            ),
        },
        optional={"permission": permissions, "cache": json_scalars},
    ),
    st.fixed_dictionaries(
        {
            "mountPath": mounts,
            "publicGit": st.one_of(st.fixed_dictionaries({"url": git_strings}), json_scalars),
        },
        optional={"permission": permissions},
    ),
)


@pytest.mark.django_db
@given(st.lists(ovh_volumes, max_size=3))
@API_FUZZ
@example([{"mountPath": "/workspace/d", "dataStore": {"alias": "store", "container": "b\x00"}}])
@example([{"mountPath": "/workspace/r", "publicGit": {"url": "https://e.com/r\x00.git"}}])
def test_creating_a_notebook_through_ovhai_with_fuzzed_volumes_is_200_or_400(
    alice_api, store, fuzzed
):
    body = {
        "name": "fuzz",
        "env": {"frameworkId": "conda", "editorId": "jupyterlab"},
        "resources": {"cpu": 1},
        "volumes": fuzzed,
    }
    _created_or_refused(alice_api, "/ovhai/v1/notebook", body)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "volume",
    [
        "bucket@store:/workspace/d\x00ta:RW",
        "https://example.com/r\x00.git:/workspace/r",
        {"container": "bucket", "alias": "store", "mount_path": "/workspace/a\x00"},
    ],
)
def test_a_nul_in_a_volume_is_a_400_naming_it(alice_api, store, volume):
    """PostgreSQL cannot store a NUL in JSON: the parser refuses it (it was a 500)."""
    body = {
        "name": "nul",
        "env": {"framework_id": "conda", "editor_id": "jupyterlab"},
        "resources": {"cpu": 1},
        "volumes": [volume],
    }
    reply = alice_api.post(NOTEBOOKS, body, format="json")
    assert reply.status_code == 400, reply.content
    assert "NUL character" in reply.json()["message"]
