"""A notebook's volumes on its host: what the lifecycle calls.

Before the editor starts, `prepare` clones the git volumes into the workspace
(git.py) and pulls the object-storage volumes into directories of the host
(s3.py, through the project's cache for `:cache` volumes: cache.py), and
returns the mounts to bind; `push` sends RW and RWD volumes back, on stop and
on demand. Progress shows in the notebook's status (progress.py).

The directories bound into a notebook, and its workspace, are the notebook's:
it can plant links there and swap them while root works. Root touches them
only through safefs (files.py: handles opened beneath the tree's root without
following links, new files renamed into place, uploads from a handle it
opened itself).
"""

import shutil
from pathlib import Path

from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.volumes import GitVolume, ObjectVolume

from .. import safefs
from ..runtimes.base import Mount
from .cache import prune_cache
from .errors import VolumeError
from .files import make_mount_point, notebook_dir, volume_dir
from .git import clone_git_volume
from .progress import SyncStatus
from .s3 import pending_push, pull_object_volume, push_object_volume

__all__ = ["VolumeError", "prepare", "prune_cache", "push", "remove_local", "volume_dir"]


def _object_volumes(notebook: Notebook) -> list[tuple[int, ObjectVolume]]:
    """The notebook's object-storage volumes with their place in its spec."""
    return [(i, v) for i, v in enumerate(notebook.volume_values) if isinstance(v, ObjectVolume)]


def prepare(notebook: Notebook, workspace: Path) -> list[Mount]:
    """Before the editor starts: clone git volumes, pull object volumes; the mounts to bind.

    Changes a failed push left on this host are pushed first, so a pull never
    overwrites them.
    """
    volumes = notebook.volume_values
    if not volumes:
        return []
    leftovers = [i for i, v in _object_volumes(notebook) if pending_push(notebook, i, v)]
    if leftovers:
        push(notebook, only=leftovers)
    status = SyncStatus(notebook, "pull", volumes)
    mounts = []
    try:
        for index, volume in enumerate(volumes):
            if isinstance(volume, GitVolume):
                clone_git_volume(notebook, volume, workspace, status, index)
                continue
            directory = pull_object_volume(notebook, index, volume, status)
            safefs.chown_tree(directory, notebook.sandbox_uid)
            make_mount_point(workspace, notebook.sandbox_uid, volume)
            mounts.append(Mount(str(directory), volume.mount_path, not volume.writable))
    except VolumeError as exc:
        status.fail(str(exc))
        raise
    return mounts


def push(notebook: Notebook, *, only: list[int] | None = None) -> None:
    """Push the notebook's RW and RWD object volumes; raise VolumeError on the first failure."""
    writable = [
        (i, v) for i, v in _object_volumes(notebook) if v.writable and (only is None or i in only)
    ]
    if not writable:
        return
    status = SyncStatus(notebook, "push", [v for _, v in writable])
    for position, (index, volume) in enumerate(writable):
        try:
            push_object_volume(notebook, index, volume, status, position)
        except VolumeError as exc:
            status.fail(str(exc), position)
            raise


def remove_local(notebook: Notebook) -> None:
    """Forget the notebook's copies; cached volumes stay for the project's next notebook."""
    shutil.rmtree(notebook_dir(notebook), ignore_errors=True)
