"""Object-storage volumes: pulled from an S3 datastore before the editor starts, pushed back.

`container@alias[/prefix]:/workspace/path[:RO|RW|RWD][:cache]` is pulled into a
directory of the host and bound at its mount path; RW and RWD volumes are
pushed back on stop and on demand. A pull fetches only what changed remotely
(the manifest's ETags), a push sends only what changed locally (sizes and
mtimes), and a redelivered push sends nothing. Each file is sent from a
handle root opened itself, beneath the volume's directory.

The datastore's credentials never reach a message, an event or a log line.
"""

import errno
import logging
import os
import shutil
from collections import deque
from pathlib import Path, PurePosixPath

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from django.conf import settings

from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.volumes import ObjectVolume
from nbcloud.projects.models import Datastore

from .. import safefs
from .cache import cache_dir, cache_lock, copy_from_cache
from .errors import VolumeError
from .files import (
    NewFile,
    delete_local,
    ensure_dir,
    manifest_path,
    read_manifest,
    unchanged,
    volume_dir,
    write_manifest,
)
from .progress import SyncStatus, TransferProgress

log = logging.getLogger(__name__)


def _prefix(volume: ObjectVolume) -> str:
    prefix = volume.prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def _datastore(notebook: Notebook, volume: ObjectVolume) -> Datastore:
    store = notebook.project.datastores.filter(alias=volume.alias).first()
    if store is None:
        raise VolumeError(
            f"volume {volume.spec}: the project has no datastore {volume.alias!r} any "
            "more; add it again or remove the volume"
        )
    if store.type != Datastore.Type.S3:
        raise VolumeError(
            f"volume {volume.spec}: datastore {volume.alias!r} is a {store.type} "
            "datastore, not an S3 one"
        )
    return store


def _s3_error(volume: ObjectVolume, store: Datastore, exc: Exception) -> VolumeError:
    """An S3 failure in words a user can act on (no credentials in it)."""
    where = f"volume {volume.spec}"
    if isinstance(exc, EndpointConnectionError):
        return VolumeError(
            f"{where}: cannot reach the endpoint {store.endpoint or 'of AWS S3'} of datastore "
            f"{store.alias!r}; check its URL and that it is up"
        )
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            return VolumeError(
                f"{where}: the bucket {volume.container!r} does not exist at datastore "
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


def _pull_into(
    client, volume: ObjectVolume, directory: Path, status: SyncStatus, index: int, uid: int | None
) -> None:
    """Mirror the volume's objects into `directory` (files given to `uid` if set)."""
    prefix = _prefix(volume)
    root_fd = ensure_dir(directory, 0o700)
    pending: deque[tuple[str, NewFile, object]] = deque()
    manifest = read_manifest(directory)
    try:
        remote = _list_objects(client, volume.container, prefix)
        local = safefs.regular_files(root_fd)
        wanted = [
            rel
            for rel, obj in remote.items()
            if not (
                rel in local
                and unchanged(manifest.get(rel), local[rel])
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
            delete_local(root_fd, rel)
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
                    new = NewFile(root_fd, rel, uid)
                except safefs.UnsafePath as exc:
                    raise VolumeError(f"volume {volume.spec}: {exc.strerror}") from None
                future = manager.download(
                    volume.container,
                    prefix + rel,
                    new.file,
                    subscribers=[TransferProgress(status, index)],
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
        write_manifest(directory, manifest)


def pull_object_volume(
    notebook: Notebook, index: int, volume: ObjectVolume, status: SyncStatus
) -> Path:
    """Mirror the volume's objects into the notebook's directory; fetch only what changed.

    A cached volume is fetched into the project's cache, then copied from there.
    """
    store = _datastore(notebook, volume)
    directory = volume_dir(notebook, index)
    uid = notebook.sandbox_uid
    client = store.s3_client(max_pool_connections=settings.NBCLOUD_S3_CONCURRENCY * 2)
    try:
        if volume.cache:
            cache = cache_dir(notebook, volume)
            with cache_lock(cache):
                if os.geteuid() == 0:
                    os.close(ensure_dir(cache, 0o700))
                    os.chown(cache, 0, 0, follow_symlinks=False)  # root's alone
                _pull_into(client, volume, cache, status, index, uid=None)
                os.utime(manifest_path(cache))  # the cache's "last used"
                copy_from_cache(cache, directory, uid)
        else:
            _pull_into(client, volume, directory, status, index, uid=uid)
    except (ClientError, BotoCoreError) as exc:
        raise _s3_error(volume, store, exc) from exc
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        if not volume.cache:  # what came in is of no use half-done, and takes the space
            shutil.rmtree(directory, ignore_errors=True)
        raise VolumeError(
            f"volume {volume.spec}: this host ran out of disk space pulling it; nothing of "
            "it is kept. Start the notebook again later, or ask an operator to free space."
        ) from exc
    finally:
        client.close()
    status.update(index, force=True, state="DONE")
    return directory


def _local_changes(root_fd: int, directory: Path, volume: ObjectVolume):
    """(manifest, local files, changed files, deleted files) of a pulled directory."""
    manifest = read_manifest(directory)
    local = safefs.regular_files(root_fd)
    changed = [rel for rel, st in local.items() if not unchanged(manifest.get(rel), st)]
    deleted = [rel for rel in manifest if rel not in local] if volume.permission == "RWD" else []
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
    notebook: Notebook, index: int, volume: ObjectVolume, status: SyncStatus, entry: int
) -> None:
    """Upload new and changed files; with RWD also delete what the user deleted.

    `index` is the volume's place in the notebook's spec, `entry` its place in `status`.
    Each file is sent from a handle opened beneath the volume's directory without
    following links, so a link swapped in while the push runs sends nothing from outside.
    """
    store = _datastore(notebook, volume)
    directory = volume_dir(notebook, index)
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
                    file,
                    volume.container,
                    prefix + rel,
                    subscribers=[TransferProgress(status, entry)],
                )
                pending.append((rel, file, st, future))
                if len(pending) >= _in_flight():
                    finish()
            while pending:
                finish()
        for start in range(0, len(deleted), 1000):
            batch = deleted[start : start + 1000]
            client.delete_objects(
                Bucket=volume.container,
                Delete={"Objects": [{"Key": prefix + rel} for rel in batch], "Quiet": True},
            )
            for rel in batch:
                manifest.pop(rel, None)
            done += len(batch)
            status.update(entry, files_done=done)
        if sent:
            # The ETags the store gave the new objects, for the next pull's comparison.
            remote = _list_objects(client, volume.container, prefix)
            for rel, st in sent.items():
                if rel in remote:
                    manifest[rel] = {
                        "etag": remote[rel]["etag"],
                        "size": st.st_size,
                        "mtime_ns": st.st_mtime_ns,
                    }
    except (ClientError, BotoCoreError) as exc:
        write_manifest(directory, manifest)  # what was deleted stays recorded as deleted
        raise _s3_error(volume, store, exc) from exc
    finally:
        for _, file, _, _ in pending:
            file.close()
        os.close(root_fd)
        client.close()
    write_manifest(directory, manifest)
    status.update(entry, force=True, state="DONE")


def pending_push(notebook: Notebook, index: int, volume: ObjectVolume) -> bool:
    """Whether the volume's directory holds changes not pushed yet (a failed push's)."""
    directory = volume_dir(notebook, index)
    if not volume.writable or not directory.exists():
        return False
    root_fd = safefs.open_root(directory)
    try:
        _, _, changed, deleted = _local_changes(root_fd, directory, volume)
    finally:
        os.close(root_fd)
    return bool(changed or deleted)
