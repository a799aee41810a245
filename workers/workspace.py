"""A notebook's workspace on its host, and its backups in the backups storage.

Backups are tar archives (gzipped if NBCLOUD_BACKUP_COMPRESSION says so)
streamed to the storage through a pipe (never a whole archive in memory or a
temporary file), multipart on S3, and checksummed on the way; a restore
streams back (ranged GETs in parallel on S3), extracts beside the final
place, checks the checksum, then moves into place, so a broken archive never
leaves half a workspace.

Importable without Django's app registry (the models only inside the functions
that read or write rows): a scheduler's job (workers.runtimes.slurm_job)
restores and saves the workspace on its own node with `materialise` and
`write_archive`, and the worker records what it saved with `record_backup`.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import uuid
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.files import File
from django.core.files.storage import storages
from django.db import transaction
from django.utils import timezone

from . import safefs
from .runtimes.base import StartError

if TYPE_CHECKING:
    from nbcloud.notebooks.models import Backup, Notebook

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024


class ChecksumMismatch(RuntimeError):
    pass


class HashingReader:
    """Wraps a binary stream; hashes and counts what is read through it."""

    def __init__(self, raw):
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def seekable(self) -> bool:
        return False  # a stream: storages must not rewind it

    @property
    def closed(self) -> bool:
        return self.raw.closed

    def close(self) -> None:
        self.raw.close()

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def backup_storage():
    return storages["backups"]


def local_path(notebook: Notebook) -> Path:
    return settings.NBCLOUD_WORKSPACES_DIR / str(notebook.pk)


def tree_size(path: Path) -> int:
    """Bytes of the files below `path`; its links are never followed (os.fwalk)."""
    total = 0
    try:
        walk = os.fwalk(path, follow_symlinks=False)
        for _, _, files, dir_fd in walk:
            for name in files:
                try:
                    total += os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_size
                except OSError:
                    continue
    except FileNotFoundError:
        pass
    return total


def prepare(notebook: Notebook) -> Path:
    """Make the workspace ready: the local copy if this host has one, else the last backup."""
    path = local_path(notebook)
    latest = None if path.exists() else notebook.backups.first()
    try:
        materialise(path, notebook.sandbox_uid, latest)
    except UnsafeBackup:
        raise
    except Exception as exc:
        raise restore_failure(notebook, latest, failure_kind(exc), str(exc)) from exc
    return path


def materialise(path: Path, uid: int, latest) -> None:
    """The workspace at `path`, given to `uid`: the local copy if there is one, else
    `latest` restored (anything with the backup's `pk`, `storage_name` and `sha256`;
    None: a new, empty workspace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o711)
    if not path.exists():
        if latest is None:
            path.mkdir(mode=0o700)
            if os.geteuid() == 0:
                os.chown(path, uid, uid)
        else:
            restore(latest, path, uid=uid)
    else:  # the notebook's own tree: its links are never followed
        safefs.chown_tree(path, uid)
    os.chmod(path, 0o700, follow_symlinks=False)


def restore_values(notebook: Notebook) -> dict[str, str]:
    """The latest backup as plain values, for a job that restores it on its node."""
    latest = notebook.backups.first()
    if latest is None:
        return {}
    return {"pk": str(latest.pk), "storage_name": latest.storage_name, "sha256": latest.sha256}


def failure_kind(exc: BaseException) -> str:
    """Why a restore failed, as one word a job can hand back to its worker."""
    if isinstance(exc, UnsafeBackup):
        return "unsafe"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no-space"
    if isinstance(
        exc, ChecksumMismatch | tarfile.TarError | EOFError | zlib.error | gzip.BadGzipFile
    ):
        return "corrupt"
    if _missing(exc):
        return "missing"
    return f"unreadable:{exc.__class__.__name__}"


def restore_failure(notebook: Notebook, backup: Backup, kind: str, detail: str) -> StartError:
    """What the owner reads when the last backup cannot be restored, and what to do."""
    when = f"backup {backup.pk} of {backup.created_at:%Y-%m-%d %H:%M} UTC"
    previous = notebook.backups.exclude(pk=backup.pk).first()
    offer = (
        f" The previous one is backup {previous.pk} of {previous.created_at:%Y-%m-%d %H:%M} UTC: "
        f"fork it (POST .../backups/{previous.pk}/fork/, `nbc notebook backup fork NOTEBOOK {previous.pk}`)."
        if previous is not None
        else " There is no older backup to fall back on."
    )
    if kind == "unsafe":  # its own message says which member and what to do
        return UnsafeBackup(detail, backup.storage_name)
    if kind == "no-space":
        return StartError(
            f"The host ran out of disk space restoring the workspace ({when}); nothing was "
            "left half-restored. Start it again later, or ask an operator to free space.",
            detail,
        )
    if kind == "corrupt":
        return StartError(f"The workspace's latest {when} is corrupt.{offer}", detail)
    if kind == "missing":
        return StartError(f"The workspace's latest {when} is missing from storage.{offer}", detail)
    return StartError(
        f"The workspace's latest {when} could not be read ({kind.partition(':')[2] or kind}): "
        "the object store may be down. Start the notebook again in a while.",
        detail,
    )


def _missing(exc: Exception) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    response = getattr(exc, "response", None)  # botocore's ClientError
    code = (response or {}).get("Error", {}).get("Code", "") if isinstance(response, dict) else ""
    return code in ("NoSuchKey", "404", "NotFound")


@contextlib.contextmanager
def _open_archive(name: str):
    """The stored archive as a stream.

    From S3, parallel ranged GETs written in order into a pipe (the storage's
    own `open` would first download the whole archive to a temporary file);
    from any other storage, its `open`.
    """
    storage = backup_storage()
    bucket = getattr(storage, "bucket", None)
    if bucket is None:
        with storage.open(name, "rb") as stream:
            yield stream
        return
    config = storage.transfer_config
    config.max_in_memory_download_chunks = 64  # x 256 KiB buffered out of order
    read_fd, write_fd = os.pipe()
    errors: list[BaseException] = []

    def download() -> None:
        try:
            with os.fdopen(write_fd, "wb") as pipe:
                bucket.Object(storage._normalize_name(name)).download_fileobj(pipe, Config=config)
        except BaseException as exc:  # reported by the reading side
            errors.append(exc)

    thread = threading.Thread(target=download, daemon=True)
    thread.start()
    try:
        with os.fdopen(read_fd, "rb") as stream:
            try:
                yield stream
                stream.read()  # to the end, so the writer finishes
            finally:
                stream.close()
                thread.join()
    except Exception as exc:
        # A download cut short reads as a short archive ("empty file", unexpected
        # end): the store's error is the cause, not a corrupt backup. A broken pipe
        # is the reader stopping early (an unsafe member): its own error stands.
        if errors and not isinstance(errors[0], BrokenPipeError):
            raise errors[0] from exc
        raise
    if errors:
        raise errors[0]


class UnsafeBackup(StartError):
    """A backup archive with a member that could write or link outside the workspace."""


def restore(backup: Backup, path: Path, uid: int | None = None) -> None:
    """Extract `backup` as `path`, given to `uid` when set.

    The extraction and the chown happen in a root-only staging directory beside
    `path` that the notebook cannot reach, so both only ever see the archive's
    own members, checked one by one (safefs.extract_tar); then it moves into place.
    """
    staging = path.with_name(f".{path.name}.restoring")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    try:
        with _open_archive(backup.storage_name) as stream:
            reader = HashingReader(stream)
            with tarfile.open(fileobj=reader, mode="r|*", bufsize=CHUNK) as archive:
                try:
                    safefs.extract_tar(archive, staging)
                except safefs.UnsafeArchive as exc:
                    raise UnsafeBackup(
                        f"The workspace's backup {backup.pk} was refused: {exc}. Fork an "
                        "older backup, or ask an operator to remove this one.",
                        backup.storage_name,
                    ) from None
            reader.drain()
        if reader.sha256.hexdigest() != backup.sha256:
            raise ChecksumMismatch(
                f"backup {backup.pk} is corrupt: sha256 {reader.sha256.hexdigest()} "
                f"!= recorded {backup.sha256}"
            )
        if uid is not None:
            safefs.chown_tree(staging, uid, trusted=True)
        staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class ArchiveError(RuntimeError):
    pass


def _archive_command(path: Path) -> list[str]:
    """GNU tar: it reads a tree faster than Python's tarfile; restores use tarfile's filter."""
    argv = ["tar", "--create", "--format=gnu", "--directory", str(path), "--file", "-", "."]
    if settings.NBCLOUD_BACKUP_COMPRESSION == "gzip":
        argv.insert(1, "--gzip")
    return argv


def archive_name(project: str, notebook_id: str) -> str:
    """A new backup's name in the storage."""
    suffix = ".tar.gz" if settings.NBCLOUD_BACKUP_COMPRESSION == "gzip" else ".tar"
    stamp = f"{timezone.now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    return f"{project}/{notebook_id}/{stamp}{suffix}"


def write_archive(path: Path, name: str) -> dict:
    """Stream the tree at `path` into the storage as `name`; what `record_backup` needs.
    Nothing is left in the storage when it fails."""
    storage = backup_storage()
    size = tree_size(path)
    with tempfile.TemporaryFile() as stderr:
        tar = subprocess.Popen(_archive_command(path), stdout=subprocess.PIPE, stderr=stderr)
        try:
            reader = HashingReader(tar.stdout)
            stored_name = storage.save(name, File(reader, name=name))
            # 1: a file changed while it was read (the editor is down: logs, sockets).
            if tar.wait() > 1:
                stderr.seek(0)
                raise ArchiveError(f"tar failed ({tar.returncode}): {stderr.read()[-500:]!r}")
        except BaseException:
            tar.kill()
            tar.wait()
            if storage.exists(name):
                storage.delete(name)
            raise
        finally:
            tar.stdout.close()
    return {
        "storage_name": stored_name,
        "size": reader.size,
        "sha256": reader.sha256.hexdigest(),
        "workspace_size": size,
    }


def backup(notebook: Notebook) -> Backup:
    """Stream the workspace into a new backup and apply the retention rule."""
    name = archive_name(notebook.project.name, str(notebook.pk))
    return record_backup(notebook, write_archive(local_path(notebook), name))


def record_backup(notebook: Notebook, saved: dict) -> Backup:
    """The row of an archive `write_archive` stored (here or in a scheduler's job), once
    however often it is recorded; then the retention rule."""
    from nbcloud.notebooks.models import Backup

    with transaction.atomic():
        record, _ = Backup.objects.get_or_create(
            notebook=notebook,
            storage_name=saved["storage_name"],
            defaults={
                "size": saved["size"],
                "sha256": saved["sha256"],
                "workspace_size": saved["workspace_size"],
            },
        )
    prune(notebook)
    return record


def prune(notebook: Notebook) -> None:
    from nbcloud.notebooks.models import Backup

    keep = settings.NBCLOUD_BACKUP_RETENTION
    for old in notebook.backups.all()[keep:]:
        name = old.storage_name
        old.delete()
        # A fork shares its source's archive: the last row naming it deletes it.
        if not Backup.objects.filter(storage_name=name).exists():
            backup_storage().delete(name)


def remove_local(notebook: Notebook) -> None:
    shutil.rmtree(local_path(notebook), ignore_errors=True)
