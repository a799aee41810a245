"""Where a notebook's volumes live on the host, and how root writes there.

Each pulled directory has a manifest beside it (never inside, so the user never
sees it) recording, per file, the object's ETag and size and the local file's
size and mtime as last synced. The directories are the notebook's: root opens
them beneath a handle without following links, and writes new files under a
temporary name that it renames into place.
"""

import contextlib
import json
import os
import tempfile
from pathlib import Path, PurePosixPath

from django.conf import settings

from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.volumes import Volume

from .. import safefs
from .errors import VolumeError

WORKSPACE = PurePosixPath("/workspace")
MANIFEST_SUFFIX = ".manifest.json"


def notebook_dir(notebook: Notebook) -> Path:
    """Where this host keeps the notebook's copies of its object-storage volumes."""
    return settings.NBCLOUD_VOLUMES_DIR / str(notebook.pk)


def volume_dir(notebook: Notebook, index: int) -> Path:
    """The directory on this host of the notebook's volume `index`, bound into the
    notebook: always its own (a cached volume's copy comes from the project's cache,
    which is never bound into a notebook)."""
    return notebook_dir(notebook) / str(index)


def manifest_path(directory: Path) -> Path:
    return directory.with_name(directory.name + MANIFEST_SUFFIX)


def read_manifest(directory: Path) -> dict:
    try:
        return json.loads(manifest_path(directory).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def write_manifest(directory: Path, manifest: dict) -> None:
    path = manifest_path(directory)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as tmp:
        json.dump(manifest, tmp)
    os.replace(tmp.name, path)


def unchanged(entry: dict | None, st: os.stat_result) -> bool:
    """Whether a local file is as the manifest's entry recorded it when last synced."""
    return bool(entry) and entry["size"] == st.st_size and entry["mtime_ns"] == st.st_mtime_ns


def make_mount_point(workspace: Path, uid: int, volume: Volume) -> None:
    """The volume's mount path and its missing parents below the workspace, owned by the
    notebook's user; made beneath a handle on the workspace, never through one of its links."""
    rel = PurePosixPath(volume.mount_path).relative_to(WORKSPACE).as_posix()
    root_fd = safefs.open_root(workspace)
    try:
        os.close(safefs.open_dir(root_fd, rel, create=True, uid=uid))
    except safefs.UnsafePath as exc:
        raise VolumeError(
            f"volume {volume.spec}: cannot make its mount point in the workspace: "
            f"{exc.strerror}; remove it from the workspace or choose another mount path"
        ) from None
    finally:
        os.close(root_fd)


def ensure_dir(directory: Path, mode: int) -> int:
    """Make `directory` (its parents are root's) and open it without following a link."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = safefs.open_root(directory)
    os.fchmod(fd, mode)
    return fd


def delete_local(root_fd: int, rel: str) -> None:
    with (
        contextlib.suppress(FileNotFoundError, safefs.UnsafePath),
        safefs.parent_of(root_fd, rel) as (dir_fd, name),
    ):
        os.unlink(name, dir_fd=dir_fd)


class NewFile:
    """A file being written beneath a tree under a temporary name, renamed into place."""

    def __init__(self, root_fd: int, rel: str, uid: int | None):
        self.rel, self.uid = rel, uid
        with safefs.parent_of(root_fd, rel, create=True, uid=uid, clear=True) as (dir_fd, name):
            self.dir_fd = os.dup(dir_fd)
            self.name = name
        fd, self.temp = safefs.new_file(self.dir_fd)
        self.file = os.fdopen(fd, "wb")

    def commit(self, mtime_ns: int | None = None) -> os.stat_result:
        self.file.flush()
        fd = self.file.fileno()
        if mtime_ns is not None:
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        os.fchmod(fd, 0o644)
        if self.uid is not None and os.geteuid() == 0:
            os.fchown(fd, self.uid, self.uid)
        st = os.fstat(fd)
        self.file.close()
        safefs.replace(self.dir_fd, self.temp, self.name)
        os.close(self.dir_fd)
        self.dir_fd = None
        return st

    def discard(self) -> None:
        self.file.close()
        if self.dir_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.temp, dir_fd=self.dir_fd)
            os.close(self.dir_fd)
            self.dir_fd = None
