"""A notebook's volumes on its host.

Object-storage volumes (`container@alias[/prefix]:/workspace/path[:RO|RW|RWD][:cache]`)
are pulled into a directory of the host before the editor starts and bound at
their mount path; RW and RWD volumes are pushed back on stop and on demand.
A `:cache` volume is pulled into the project's cache on the host, which only
root reads and writes, and each notebook gets its own copy of it: a cache is
never bound into a notebook.
Each directory has a manifest beside it (never inside, so the user never sees
it) recording, per file, the object's ETag and size and the local file's size
and mtime as last synced: a pull fetches only what changed remotely, a push
sends only what changed locally, and a redelivered push sends nothing.

Git volumes (`https://host/repo.git[@branch]:/workspace/path[:RO|RW]`) are
cloned into the workspace at first start, so the clone and the user's work in
it live with the workspace and its backups; nbcloud never pushes to git.

Credentials come from the project's datastores and never reach a message,
an event or a log line.

The directories bound into a notebook, and its workspace, are the notebook's:
it can plant links there and swap them while root works. Root touches them
only through safefs (handles opened beneath the tree's root without following
links, new files renamed into place, uploads from a handle it opened itself);
git clones into a directory beside the workspace that the notebook cannot
reach, and the finished clone is moved into place.
"""

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from django.conf import settings
from s3transfer.subscribers import BaseSubscriber

from nbcloud.notebooks.models import Notebook
from nbcloud.projects.models import Datastore

from . import safefs
from .runtimes.base import Mount

log = logging.getLogger(__name__)
WORKSPACE = PurePosixPath("/workspace")
MANIFEST_SUFFIX = ".manifest.json"
PROGRESS_EVERY = 0.5  # seconds between progress writes to the notebook row


class VolumeError(RuntimeError):
    """A volume could not be synced; the message is for the notebook's owner."""


# Progress, shown in the notebook's status.data_sync.


class SyncStatus:
    """The notebook's `data_sync` list, written to its row at most every PROGRESS_EVERY s."""

    def __init__(self, notebook: Notebook, direction: str, volumes: list[dict]):
        self.notebook = notebook
        self.lock = threading.Lock()
        self.entries = [
            {
                "volume": v["spec"],
                "mount_path": v["mount_path"],
                "direction": direction,
                "state": "QUEUED",
                "files_done": 0,
                "files_total": 0,
                "bytes_done": 0,
                "bytes_total": 0,
                "message": "",
            }
            for v in volumes
        ]
        self.written = 0.0
        self.save(force=True)

    def update(self, index: int, *, force: bool = False, add_bytes: int = 0, **fields) -> None:
        with self.lock:
            entry = self.entries[index]
            entry.update(fields)
            entry["bytes_done"] += add_bytes
        self.save(force=force)

    def save(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.written < PROGRESS_EVERY:
            return
        self.written = now
        with self.lock:
            snapshot = [dict(e) for e in self.entries]
        Notebook.objects.filter(pk=self.notebook.pk).update(data_sync=snapshot)


class _Progress(BaseSubscriber):
    def __init__(self, status: SyncStatus, index: int):
        self.status, self.index = status, index

    def on_progress(self, future, bytes_transferred, **kwargs):
        self.status.update(self.index, add_bytes=bytes_transferred)


# Where things are on the host.


def _private_dir(notebook: Notebook, index: int) -> Path:
    return settings.NBCLOUD_VOLUMES_DIR / str(notebook.pk) / str(index)


def _cache_dir(notebook: Notebook, volume: dict) -> Path:
    key = "\x00".join((volume["alias"], volume["container"], volume["prefix"]))
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return settings.NBCLOUD_VOLUME_CACHE_DIR / str(notebook.project_id) / digest


def volume_dir(notebook: Notebook, index: int, volume: dict) -> Path:
    """The volume's directory on this host, bound into the notebook: always its own.

    A cached volume's copy comes from the project's cache (`_cache_dir`), which
    is never bound into a notebook.
    """
    return _private_dir(notebook, index)


@contextlib.contextmanager
def _cache_lock(cache: Path, *, wait: bool = True):
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


def _manifest_path(directory: Path) -> Path:
    return directory.with_name(directory.name + MANIFEST_SUFFIX)


def _read_manifest(directory: Path) -> dict:
    try:
        return json.loads(_manifest_path(directory).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _write_manifest(directory: Path, manifest: dict) -> None:
    path = _manifest_path(directory)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as tmp:
        json.dump(manifest, tmp)
    os.replace(tmp.name, path)


def _object_volumes(notebook: Notebook) -> list[tuple[int, dict]]:
    return [(i, v) for i, v in enumerate(notebook.volumes) if v["type"] == "object"]


def _workspace_target(workspace: Path, mount_path: str) -> Path:
    return workspace / PurePosixPath(mount_path).relative_to(WORKSPACE)


def _make_dirs(workspace: Path, target: Path, uid: int, volume: dict) -> None:
    """`target` and its missing parents below the workspace, owned by the notebook's user;
    made beneath a handle on the workspace, never through one of its links."""
    rel = target.relative_to(workspace).as_posix()
    root_fd = safefs.open_root(workspace)
    try:
        os.close(safefs.open_dir(root_fd, rel, create=True, uid=uid))
    except safefs.UnsafePath as exc:
        raise VolumeError(
            f"volume {volume['spec']}: cannot make its mount point in the workspace: "
            f"{exc.strerror}; remove it from the workspace or choose another mount path"
        ) from None
    finally:
        os.close(root_fd)


# Object storage.


def _prefix(volume: dict) -> str:
    prefix = volume["prefix"].strip("/")
    return f"{prefix}/" if prefix else ""


def _datastore(notebook: Notebook, volume: dict) -> Datastore:
    store = notebook.project.datastores.filter(alias=volume["alias"]).first()
    if store is None:
        raise VolumeError(
            f"volume {volume['spec']}: the project has no datastore {volume['alias']!r} any "
            "more; add it again or remove the volume"
        )
    if store.type != Datastore.Type.S3:
        raise VolumeError(
            f"volume {volume['spec']}: datastore {volume['alias']!r} is a {store.type} "
            "datastore, not an S3 one"
        )
    return store


def _s3_error(volume: dict, store: Datastore, exc: Exception) -> VolumeError:
    """An S3 failure in words a user can act on (no credentials in it)."""
    where = f"volume {volume['spec']}"
    if isinstance(exc, EndpointConnectionError):
        return VolumeError(
            f"{where}: cannot reach the endpoint {store.endpoint or 'of AWS S3'} of datastore "
            f"{store.alias!r}; check its URL and that it is up"
        )
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            return VolumeError(
                f"{where}: the bucket {volume['container']!r} does not exist at datastore "
                f"{store.alias!r}; create it or fix the volume"
            )
        if code in (
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
            "403",
            "InvalidToken",
        ):
            return VolumeError(
                f"{where}: datastore {store.alias!r} refused its credentials ({code}); update "
                "the datastore's access and secret keys"
            )
        return VolumeError(f"{where}: the object store answered {code or 'an error'}")
    return VolumeError(f"{where}: transfer failed ({exc.__class__.__name__})")


def _list_objects(client, bucket: str, prefix: str) -> dict[str, dict]:
    """{relative path: {"etag", "size"}} of the objects under `prefix`."""
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            rel = item["Key"][len(prefix) :]
            if not rel or rel.endswith("/"):
                continue  # "folder" markers
            parts = PurePosixPath(rel).parts
            if rel.startswith("/") or ".." in parts or "." in parts:
                log.warning("skipping object %r: not a safe relative path", item["Key"])
                continue
            objects[rel] = {"etag": item["ETag"].strip('"'), "size": item["Size"]}
    return objects


def _transfer_manager(client):
    config = TransferConfig(
        multipart_threshold=settings.NBCLOUD_S3_PART_SIZE,
        multipart_chunksize=settings.NBCLOUD_S3_PART_SIZE,
        max_concurrency=settings.NBCLOUD_S3_CONCURRENCY,
        use_threads=True,
    )
    return create_transfer_manager(client, config)


def _in_flight() -> int:
    """Transfers handed to the manager at once (each holds a file open)."""
    return max(16, 4 * settings.NBCLOUD_S3_CONCURRENCY)


def _unchanged(entry: dict | None, st: os.stat_result) -> bool:
    return bool(entry) and entry["size"] == st.st_size and entry["mtime_ns"] == st.st_mtime_ns


def _ensure_dir(directory: Path, mode: int) -> int:
    """Make `directory` (its parents are root's) and open it without following a link."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = safefs.open_root(directory)
    os.fchmod(fd, mode)
    return fd


def _delete_local(root_fd: int, rel: str) -> None:
    with (
        contextlib.suppress(FileNotFoundError, safefs.UnsafePath),
        safefs.parent_of(root_fd, rel) as (dir_fd, name),
    ):
        os.unlink(name, dir_fd=dir_fd)


class _NewFile:
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


def _pull_into(
    client, volume: dict, directory: Path, status: SyncStatus, index: int, uid: int | None
) -> None:
    """Mirror the volume's objects into `directory` (files given to `uid` if set)."""
    prefix = _prefix(volume)
    root_fd = _ensure_dir(directory, 0o700)
    pending: deque[tuple[str, _NewFile, object]] = deque()
    manifest = _read_manifest(directory)
    try:
        remote = _list_objects(client, volume["container"], prefix)
        local = safefs.regular_files(root_fd)
        wanted = [
            rel
            for rel, obj in remote.items()
            if not (
                rel in local
                and _unchanged(manifest.get(rel), local[rel])
                and manifest[rel]["etag"] == obj["etag"]
            )
        ]
        status.update(
            index,
            force=True,
            state="RUNNING",
            files_total=len(wanted),
            bytes_total=sum(remote[r]["size"] for r in wanted),
        )
        for rel in set(local) - set(remote):  # deleted remotely since the last pull
            _delete_local(root_fd, rel)
            manifest.pop(rel, None)
        done = 0

        def finish() -> None:
            nonlocal done
            rel, new, future = pending.popleft()
            try:
                future.result()
                st = new.commit()
            except BaseException:
                new.discard()
                raise
            manifest[rel] = {
                "etag": remote[rel]["etag"],
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
            }
            done += 1
            status.update(index, files_done=done)

        with _transfer_manager(client) as manager:
            for rel in wanted:
                try:
                    new = _NewFile(root_fd, rel, uid)
                except safefs.UnsafePath as exc:
                    raise VolumeError(f"volume {volume['spec']}: {exc.strerror}") from None
                future = manager.download(
                    volume["container"],
                    prefix + rel,
                    new.file,
                    subscribers=[_Progress(status, index)],
                )
                pending.append((rel, new, future))
                if len(pending) >= _in_flight():
                    finish()
            while pending:
                finish()
    finally:
        for _, new, _ in pending:
            new.discard()
        os.close(root_fd)
        _write_manifest(directory, manifest)


def _copy_from_cache(cache: Path, directory: Path, uid: int) -> None:
    """Mirror the (root-only) cache into the notebook's own copy, never following a link
    of that copy, and only what differs from what it holds."""
    cached = _read_manifest(cache)
    manifest = _read_manifest(directory)
    cache_fd = safefs.open_root(cache)
    root_fd = _ensure_dir(directory, 0o700)
    try:
        local = safefs.regular_files(root_fd)
        for rel in set(local) - set(cached):
            _delete_local(root_fd, rel)
            manifest.pop(rel, None)
        for rel, entry in cached.items():
            mine = manifest.get(rel)
            if rel in local and _unchanged(mine, local[rel]) and mine.get("etag") == entry["etag"]:
                continue
            try:
                src = safefs.open_regular(cache_fd, rel)
            except (FileNotFoundError, safefs.UnsafePath):
                continue  # not a file of the cache's own: the next pull fetches it again
            if os.fstat(src).st_nlink != 1:
                # Root makes every file of the cache with one name; another name is a
                # link planted while caches were still bound into notebooks.
                os.close(src)
                _delete_local(cache_fd, rel)
                continue
            try:
                new = _NewFile(root_fd, rel, uid)
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
        _write_manifest(directory, manifest)


def pull_object_volume(notebook: Notebook, index: int, volume: dict, status: SyncStatus) -> Path:
    """Mirror the volume's objects into the notebook's directory; fetch only what changed.

    A cached volume is fetched into the project's cache, then copied from there.
    """
    store = _datastore(notebook, volume)
    directory = _private_dir(notebook, index)
    uid = notebook.sandbox_uid
    client = store.s3_client(max_pool_connections=settings.NBCLOUD_S3_CONCURRENCY * 2)
    try:
        if volume.get("cache"):
            cache = _cache_dir(notebook, volume)
            with _cache_lock(cache):
                if os.geteuid() == 0:
                    os.close(_ensure_dir(cache, 0o700))
                    os.chown(cache, 0, 0, follow_symlinks=False)  # root's alone
                _pull_into(client, volume, cache, status, index, uid=None)
                os.utime(_manifest_path(cache))  # the cache's "last used"
                _copy_from_cache(cache, directory, uid)
        else:
            _pull_into(client, volume, directory, status, index, uid=uid)
    except (ClientError, BotoCoreError) as exc:
        raise _s3_error(volume, store, exc) from exc
    finally:
        client.close()
    status.update(index, force=True, state="DONE")
    return directory


def _local_changes(root_fd: int, directory: Path, volume: dict):
    """(manifest, local files, changed files, deleted files) of a pulled directory."""
    manifest = _read_manifest(directory)
    local = safefs.regular_files(root_fd)
    changed = [rel for rel, st in local.items() if not _unchanged(manifest.get(rel), st)]
    deleted = [rel for rel in manifest if rel not in local] if volume["permission"] == "RWD" else []
    return manifest, local, changed, deleted


def _open_for_upload(root_fd: int, rel: str, uid: int) -> tuple[int, os.stat_result] | None:
    """A handle on the file to send, opened without following links, or None (with a
    warning) when it is not a regular file any more, or is a hard link to someone else's."""
    try:
        fd = safefs.open_regular(root_fd, rel)
    except (FileNotFoundError, safefs.UnsafePath) as exc:
        log.warning("not pushing %s: %s", rel, exc)
        return None
    st = os.fstat(fd)
    if os.geteuid() == 0 and st.st_uid != uid and st.st_nlink > 1:
        # A hard link to a file of root's or of another user: not the notebook's to send.
        log.warning(
            "not pushing %s: a file of uid %d with %d hard links", rel, st.st_uid, st.st_nlink
        )
        os.close(fd)
        return None
    return fd, st


def push_object_volume(
    notebook: Notebook, index: int, volume: dict, status: SyncStatus, entry: int
) -> None:
    """Upload new and changed files; with RWD also delete what the user deleted.

    `index` is the volume's place in the notebook's spec, `entry` its place in `status`.
    Each file is sent from a handle opened beneath the volume's directory without
    following links, so a link swapped in while the push runs sends nothing from outside.
    """
    store = _datastore(notebook, volume)
    directory = volume_dir(notebook, index, volume)
    if not directory.exists():
        status.update(entry, force=True, state="DONE", message="nothing pulled: nothing to push")
        return
    prefix = _prefix(volume)
    root_fd = safefs.open_root(directory)
    manifest, local, changed, deleted = _local_changes(root_fd, directory, volume)
    status.update(
        entry,
        force=True,
        state="RUNNING",
        files_total=len(changed) + len(deleted),
        bytes_total=sum(local[r].st_size for r in changed),
    )
    client = store.s3_client(max_pool_connections=settings.NBCLOUD_S3_CONCURRENCY * 2)
    sent: dict[str, os.stat_result] = {}
    pending: deque = deque()
    try:
        done = 0

        def finish() -> None:
            nonlocal done
            rel, file, st, future = pending.popleft()
            try:
                future.result()
            finally:
                file.close()
            sent[rel] = st
            done += 1
            status.update(entry, files_done=done)

        with _transfer_manager(client) as manager:
            for rel in changed:
                opened = _open_for_upload(root_fd, rel, notebook.sandbox_uid)
                if opened is None:
                    done += 1
                    continue
                fd, st = opened
                file = os.fdopen(fd, "rb")
                future = manager.upload(
                    file, volume["container"], prefix + rel, subscribers=[_Progress(status, entry)]
                )
                pending.append((rel, file, st, future))
                if len(pending) >= _in_flight():
                    finish()
            while pending:
                finish()
        for start in range(0, len(deleted), 1000):
            batch = deleted[start : start + 1000]
            client.delete_objects(
                Bucket=volume["container"],
                Delete={"Objects": [{"Key": prefix + rel} for rel in batch], "Quiet": True},
            )
            for rel in batch:
                manifest.pop(rel, None)
            done += len(batch)
            status.update(entry, files_done=done)
        if sent:
            # The ETags the store gave the new objects, for the next pull's comparison.
            remote = _list_objects(client, volume["container"], prefix)
            for rel, st in sent.items():
                if rel in remote:
                    manifest[rel] = {
                        "etag": remote[rel]["etag"],
                        "size": st.st_size,
                        "mtime_ns": st.st_mtime_ns,
                    }
    except (ClientError, BotoCoreError) as exc:
        _write_manifest(directory, manifest)  # what was deleted stays recorded as deleted
        raise _s3_error(volume, store, exc) from exc
    finally:
        for _, file, _, _ in pending:
            file.close()
        os.close(root_fd)
        client.close()
    _write_manifest(directory, manifest)
    status.update(entry, force=True, state="DONE")


# Git.

GIT_ERRORS = (
    (
        re.compile(r"Remote branch .* not found|couldn't find remote ref", re.I),
        "branch {branch!r} does not exist in the repository",
    ),
    (
        re.compile(
            r"Authentication failed|could not read Username|terminal prompts disabled|"
            r"Permission denied \(publickey|Could not read from remote repository",
            re.I,
        ),
        "the git server refused the credentials{creds}",
    ),
    (
        re.compile(
            r"not found|does not appear to be a git repository|404|repository not exported",
            re.I,
        ),
        "repository not found (check the URL{creds_hint})",
    ),
    (
        re.compile(
            r"Could not resolve host|Connection refused|unable to connect|timed out|"
            r"Couldn't connect",
            re.I,
        ),
        "cannot reach the git server {host}",
    ),
)

ASKPASS = """#!/bin/sh
case "$1" in
  Username*) printf '%s\\n' "$NBCLOUD_GIT_USERNAME" ;;
  *) printf '%s\\n' "$NBCLOUD_GIT_PASSWORD" ;;
esac
"""


def git_datastore(notebook: Notebook, url: str) -> Datastore | None:
    """The project's git datastore for the URL's host (with or without its port)."""
    parts = urlsplit(url)
    candidates = {parts.netloc.rsplit("@", 1)[-1], parts.hostname or ""}
    return (
        notebook.project.datastores.filter(type=Datastore.Type.GIT, host__in=candidates)
        .order_by("alias")
        .first()
    )


def _git_error(volume: dict, store: Datastore | None, stderr: str, secrets: list[str]) -> str:
    host = urlsplit(volume["url"]).netloc.rsplit("@", 1)[-1]  # never a user name
    creds = f" of datastore {store.alias!r}; update its username and password" if store else ""
    if not store:
        creds = f"; a private repository needs a git datastore for host {host}"
    for pattern, text in GIT_ERRORS:
        if pattern.search(stderr):
            message = text.format(
                branch=volume["branch"],
                creds=creds,
                creds_hint=", or add a git datastore if it is private" if not store else "",
                host=host,
            )
            return f"volume {volume['spec']}: {message}"
    lines = [line.strip(" '") for line in stderr.splitlines()]
    last = next((line for line in reversed(lines) if line), "")
    for secret in secrets:
        last = last.replace(secret, "***")
    return f"volume {volume['spec']}: git clone failed: {last.strip()[:300]}"


def _clone_target(workspace_fd: int, rel: str, volume: dict) -> str:
    """What the workspace holds at the mount path: "absent", "empty" or "cloned"."""
    try:
        fd = safefs.open_dir(workspace_fd, rel)
    except FileNotFoundError:
        return "absent"
    except safefs.UnsafePath as exc:
        raise VolumeError(
            f"volume {volume['spec']}: {volume['mount_path']} is not a directory of the "
            f"workspace ({exc.strerror}); remove it or choose another mount path"
        ) from None
    try:
        with contextlib.suppress(FileNotFoundError):
            os.stat(".git", dir_fd=fd, follow_symlinks=False)
            return "cloned"
        if os.listdir(fd):
            raise VolumeError(
                f"volume {volume['spec']}: {volume['mount_path']} already holds files that "
                "are not a clone of this repository; move them or choose another mount path"
            )
        return "empty"
    finally:
        os.close(fd)


def clone_git_volume(
    notebook: Notebook, volume: dict, workspace: Path, status: SyncStatus, index: int
) -> None:
    """Clone at first start; later starts find the clone in the restored workspace.

    git runs in a fresh root-only directory beside the workspace (same filesystem),
    the clone is given to the notebook's user there, then moved to its mount path
    through a handle on its parent opened without following links.
    """
    uid = notebook.sandbox_uid
    rel = PurePosixPath(volume["mount_path"]).relative_to(WORKSPACE).as_posix()
    workspace_fd = safefs.open_root(workspace)
    try:
        state = _clone_target(workspace_fd, rel, volume)
        if state == "cloned":
            status.update(index, force=True, state="DONE", message="already cloned")
            return
        status.update(index, force=True, state="RUNNING")
        private = Path(tempfile.mkdtemp(dir=workspace.parent, prefix=f".{workspace.name}.clone-"))
        try:
            staging = private / "clone"
            _run_clone(notebook, volume, staging)
            safefs.chown_tree(staging, uid, trusted=True)
            files = sum(len(names) for _, _, names in os.walk(staging))
            private_fd = safefs.open_root(private)
            try:
                with safefs.parent_of(workspace_fd, rel, create=True, uid=uid) as (parent, name):
                    # Onto nothing or onto the empty mount point; never onto anything else.
                    os.rename("clone", name, src_dir_fd=private_fd, dst_dir_fd=parent)
            except safefs.UnsafePath as exc:
                raise VolumeError(
                    f"volume {volume['spec']}: cannot place the clone at "
                    f"{volume['mount_path']}: {exc.strerror}; remove it or choose another "
                    "mount path"
                ) from None
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise
                raise VolumeError(
                    f"volume {volume['spec']}: {volume['mount_path']} changed while cloning; "
                    "move what is there and start again"
                ) from None
            finally:
                os.close(private_fd)
        finally:
            shutil.rmtree(private, ignore_errors=True)
    finally:
        os.close(workspace_fd)
    status.update(index, force=True, state="DONE", files_done=files, files_total=files)


def _run_clone(notebook: Notebook, volume: dict, staging: Path) -> None:
    """`git clone` into `staging` (in a root-only directory) with the datastore's credentials."""
    import git

    store = git_datastore(notebook, volume["url"])
    secrets = store.secrets() if store else {}
    env = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false"}
    with tempfile.TemporaryDirectory(dir=settings.DATA_DIR) as private:
        if store and secrets.get("password"):
            askpass = Path(private) / "askpass"
            askpass.write_text(ASKPASS)
            askpass.chmod(0o700)
            env.update(
                GIT_ASKPASS=str(askpass),
                NBCLOUD_GIT_USERNAME=store.username,
                NBCLOUD_GIT_PASSWORD=secrets["password"],
            )
        # ssh with the datastore's key or none at all: never the host's own keys or config.
        identity = "/dev/null"
        if store and secrets.get("ssh_private_key"):
            key = Path(private) / "id"
            key.write_text(secrets["ssh_private_key"].rstrip("\n") + "\n")
            key.chmod(0o600)
            identity = str(key)
        env["GIT_SSH_COMMAND"] = (
            f"ssh -F /dev/null -i {identity} -o IdentitiesOnly=yes -o BatchMode=yes "
            f"-o StrictHostKeyChecking=accept-new "
            f"-o UserKnownHostsFile={Path(private) / 'known_hosts'}"
        )
        options = {"single_branch": True}
        if settings.NBCLOUD_GIT_CLONE_DEPTH:
            options["depth"] = settings.NBCLOUD_GIT_CLONE_DEPTH
        if volume["branch"]:
            options["branch"] = volume["branch"]
        try:
            git.Repo.clone_from(volume["url"], staging, env=env, **options)
        except git.GitCommandError as exc:
            raise VolumeError(
                _git_error(volume, store, str(exc.stderr or ""), list(secrets.values()))
            ) from None


# What the lifecycle calls.


def _pending_push(notebook: Notebook, index: int, volume: dict) -> bool:
    directory = volume_dir(notebook, index, volume)
    if volume["permission"] == "RO" or not directory.exists():
        return False
    root_fd = safefs.open_root(directory)
    try:
        _, _, changed, deleted = _local_changes(root_fd, directory, volume)
    finally:
        os.close(root_fd)
    return bool(changed or deleted)


def prepare(notebook: Notebook, workspace: Path) -> list[Mount]:
    """Before the editor starts: clone git volumes, pull object volumes; the mounts to bind.

    Changes a failed push left on this host are pushed first, so a pull never
    overwrites them.
    """
    if not notebook.volumes:
        return []
    leftovers = [(i, v) for i, v in _object_volumes(notebook) if _pending_push(notebook, i, v)]
    if leftovers:
        push(notebook, only=[i for i, _ in leftovers])
    status = SyncStatus(notebook, "pull", notebook.volumes)
    mounts = []
    try:
        for index, volume in enumerate(notebook.volumes):
            if volume["type"] == "git":
                clone_git_volume(notebook, volume, workspace, status, index)
                continue
            directory = pull_object_volume(notebook, index, volume, status)
            safefs.chown_tree(directory, notebook.sandbox_uid)
            target = _workspace_target(workspace, volume["mount_path"])
            _make_dirs(workspace, target, notebook.sandbox_uid, volume)
            mounts.append(Mount(str(directory), volume["mount_path"], volume["permission"] == "RO"))
    except VolumeError as exc:
        _mark_failed(status, str(exc))
        raise
    return mounts


def push(notebook: Notebook, *, only: list[int] | None = None) -> None:
    """Push the notebook's RW and RWD object volumes; raise VolumeError on the first failure."""
    writable = [
        (i, v)
        for i, v in _object_volumes(notebook)
        if v["permission"] != "RO" and (only is None or i in only)
    ]
    if not writable:
        return
    status = SyncStatus(notebook, "push", [v for _, v in writable])
    for position, (index, volume) in enumerate(writable):
        try:
            push_object_volume(notebook, index, volume, status, position)
        except VolumeError as exc:
            _mark_failed(status, str(exc), position)
            raise


def _mark_failed(status: SyncStatus, message: str, position: int | None = None) -> None:
    for i, entry in enumerate(status.entries):
        if (position is None and entry["state"] in ("QUEUED", "RUNNING")) or i == position:
            status.update(i, force=True, state="FAILED", message=message)


def remove_local(notebook: Notebook) -> None:
    """Forget the notebook's copies; cached volumes stay for the project's next notebook."""
    shutil.rmtree(settings.NBCLOUD_VOLUMES_DIR / str(notebook.pk), ignore_errors=True)


def prune_cache(now: float | None = None) -> int:
    """Remove cached volumes unused for longer than NBCLOUD_VOLUME_CACHE_TTL; how many."""
    now = now or time.time()
    removed = 0
    root = settings.NBCLOUD_VOLUME_CACHE_DIR
    for manifest in root.glob(f"*/*{MANIFEST_SUFFIX}"):
        if now - manifest.stat().st_mtime <= settings.NBCLOUD_VOLUME_CACHE_TTL:
            continue
        directory = manifest.with_name(manifest.name[: -len(MANIFEST_SUFFIX)])
        with _cache_lock(directory, wait=False) as held:
            if not held:
                continue  # a pull is filling it right now
            shutil.rmtree(directory, ignore_errors=True)
            manifest.unlink(missing_ok=True)
            directory.with_suffix(".lock").unlink(missing_ok=True)
        removed += 1
    return removed
