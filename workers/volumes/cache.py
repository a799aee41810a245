"""The project's cache of `:cache` volumes on a host.

A `:cache` volume is pulled into the project's cache on the host, which only
root reads and writes, and each notebook gets its own copy of it: a cache is
never bound into a notebook. Caches unused for NBCLOUD_VOLUME_CACHE_TTL go.
"""

import contextlib
import fcntl
import hashlib
import os
import shutil
import time
from pathlib import Path

from django.conf import settings

from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.volumes import ObjectVolume

from .. import safefs
from .files import (
    MANIFEST_SUFFIX,
    NewFile,
    delete_local,
    ensure_dir,
    read_manifest,
    unchanged,
    write_manifest,
)


def cache_dir(notebook: Notebook, volume: ObjectVolume) -> Path:
    """The project's cache of the volume's objects on this host (root's alone)."""
    key = "\x00".join((volume.alias, volume.container, volume.prefix))
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return settings.NBCLOUD_VOLUME_CACHE_DIR / str(notebook.project_id) / digest


@contextlib.contextmanager
def cache_lock(cache: Path, *, wait: bool = True):
    """Holds the cache directory for one pull (or prune) at a time; yields False when
    `wait` is off and another holds it."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(cache.parent, 0o700)
    fd = os.open(cache.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def copy_from_cache(cache: Path, directory: Path, uid: int) -> None:
    """Mirror the (root-only) cache into the notebook's own copy, never following a link
    of that copy, and only what differs from what it holds."""
    cached = read_manifest(cache)
    manifest = read_manifest(directory)
    cache_fd = safefs.open_root(cache)
    root_fd = ensure_dir(directory, 0o700)
    try:
        local = safefs.regular_files(root_fd)
        for rel in set(local) - set(cached):
            delete_local(root_fd, rel)
            manifest.pop(rel, None)
        for rel, entry in cached.items():
            mine = manifest.get(rel)
            if rel in local and unchanged(mine, local[rel]) and mine.get("etag") == entry["etag"]:
                continue
            try:
                src = safefs.open_regular(cache_fd, rel)
            except (FileNotFoundError, safefs.UnsafePath):
                continue  # not a file of the cache's own: the next pull fetches it again
            if os.fstat(src).st_nlink != 1:
                # Root makes every file of the cache with one name; another name is a
                # link planted while caches were still bound into notebooks.
                os.close(src)
                delete_local(cache_fd, rel)
                continue
            try:
                new = NewFile(root_fd, rel, uid)
                try:
                    safefs.copy_file(src, new.file.fileno())
                    st = new.commit(mtime_ns=os.fstat(src).st_mtime_ns)
                except BaseException:
                    new.discard()
                    raise
            finally:
                os.close(src)
            manifest[rel] = {"etag": entry["etag"], "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    finally:
        os.close(cache_fd)
        os.close(root_fd)
        write_manifest(directory, manifest)


def prune_cache(now: float | None = None) -> int:
    """Remove cached volumes unused for longer than NBCLOUD_VOLUME_CACHE_TTL; how many."""
    now = now or time.time()
    removed = 0
    root = settings.NBCLOUD_VOLUME_CACHE_DIR
    for manifest in root.glob(f"*/*{MANIFEST_SUFFIX}"):
        if now - manifest.stat().st_mtime <= settings.NBCLOUD_VOLUME_CACHE_TTL:
            continue
        directory = manifest.with_name(manifest.name[: -len(MANIFEST_SUFFIX)])
        with cache_lock(directory, wait=False) as held:
            if not held:
                continue  # a pull is filling it right now
            shutil.rmtree(directory, ignore_errors=True)
            manifest.unlink(missing_ok=True)
            directory.with_suffix(".lock").unlink(missing_ok=True)
        removed += 1
    return removed
