"""A volume as a value: parsed once, stored as the JSON object the API shows, read back whole."""

import pytest

from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.spec import parse_volume
from nbcloud.notebooks.volumes import GitVolume, ObjectVolume, from_dict

OBJECT = "data@lake/train/:/workspace/data:rwd:cache"
GIT = "https://git.example/team/repo.git@dev:/workspace/code:RW"


def test_an_object_volume_is_stored_as_the_api_shows_it():
    volume = parse_volume(OBJECT)
    assert volume == ObjectVolume(
        container="data",
        alias="lake",
        prefix="train/",
        mount_path="/workspace/data",
        permission="RWD",
        cache=True,
        spec=OBJECT,
    )
    assert volume.to_dict() == {
        "type": "object",
        "container": "data",
        "alias": "lake",
        "prefix": "train/",
        "mount_path": "/workspace/data",
        "permission": "RWD",
        "cache": True,
        "spec": OBJECT,
    }
    assert volume.writable


def test_a_git_volume_is_stored_as_the_api_shows_it():
    volume = parse_volume(GIT)
    assert volume.to_dict() == {
        "type": "git",
        "url": "https://git.example/team/repo.git",
        "branch": "dev",
        "mount_path": "/workspace/code",
        "permission": "RW",
        "spec": GIT,
    }
    assert isinstance(volume, GitVolume)


@pytest.mark.parametrize("spec", [OBJECT, GIT, "data@lake:/workspace/ro"])
def test_a_stored_volume_reads_back_as_the_value_it_was(spec):
    volume = parse_volume(spec)
    assert from_dict(volume.to_dict()) == volume


def test_a_volume_is_frozen():
    with pytest.raises(AttributeError):
        parse_volume(OBJECT).permission = "RO"


def test_a_notebook_reads_its_volumes_as_values_in_their_order():
    volumes = [parse_volume(GIT), parse_volume(OBJECT)]
    assert Notebook(volumes=[v.to_dict() for v in volumes]).volume_values == volumes
