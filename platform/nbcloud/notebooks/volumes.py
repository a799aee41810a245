"""A notebook's volumes as values: what `spec.parse_volume` reads, the row stores, hosts mount.

The row keeps each volume as the JSON object the API shows (`to_dict`);
`from_dict` reads it back without checking it again (it was checked when the
spec was accepted), so that a rule tightened later never strands a notebook.
"""

from dataclasses import dataclass
from typing import Literal

Permission = Literal["RO", "RW", "RWD"]


@dataclass(frozen=True)
class ObjectVolume:
    """`container@alias[/prefix]:/mount/path[:RO|RW|RWD][:cache]`: objects of an S3 datastore."""

    container: str
    alias: str
    prefix: str
    mount_path: str
    permission: Permission
    cache: bool
    spec: str

    @property
    def writable(self) -> bool:
        """Pushed back on stop and on demand (RW, RWD); RWD also deletes what the user deleted."""
        return self.permission != "RO"

    def to_dict(self) -> dict:
        return {
            "type": "object",
            "container": self.container,
            "alias": self.alias,
            "prefix": self.prefix,
            "mount_path": self.mount_path,
            "permission": self.permission,
            "cache": self.cache,
            "spec": self.spec,
        }


@dataclass(frozen=True)
class GitVolume:
    """`https://host/repo.git[@branch]:/mount/path[:RO|RW]`: a clone kept in the workspace."""

    url: str
    branch: str
    mount_path: str
    permission: Permission
    spec: str

    def to_dict(self) -> dict:
        return {
            "type": "git",
            "url": self.url,
            "branch": self.branch,
            "mount_path": self.mount_path,
            "permission": self.permission,
            "spec": self.spec,
        }


Volume = ObjectVolume | GitVolume


def from_dict(stored: dict) -> Volume:
    """A volume as the row stores it (`to_dict`) -> its value."""
    common = {
        "mount_path": stored["mount_path"],
        "permission": stored["permission"],
        "spec": stored["spec"],
    }
    if stored["type"] == "git":
        return GitVolume(url=stored["url"], branch=stored["branch"], **common)
    return ObjectVolume(
        container=stored["container"],
        alias=stored["alias"],
        prefix=stored["prefix"],
        cache=bool(stored.get("cache")),
        **common,
    )
