"""A notebook's volumes on its host.

Object-storage volumes (`container@alias[/prefix]:/workspace/path[:RO|RW|RWD][:cache]`)
are pulled into a directory of the host before the editor starts and bound at
their mount path; RW and RWD volumes are pushed back on stop and on demand.
Each directory has a manifest beside it (never inside, so the user never sees
it) recording, per file, the object's ETag and size and the local file's size
and mtime as last synced: a pull fetches only what changed remotely, a push
sends only what changed locally, and a redelivered push sends nothing.

Git volumes (`https://host/repo.git[@branch]:/workspace/path[:RO|RW]`) are
cloned into the workspace at first start, so the clone and the user's work in
it live with the workspace and its backups; nbcloud never pushes to git.

Credentials come from the project's datastores and never reach a message,
an event or a log line.
"""

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from django.conf import settings
from s3transfer.subscribers import BaseSubscriber

from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.states import State
from nbcloud.projects.models import Datastore

from .runtimes.base import Mount
from .workspace import chown_tree

log = logging.getLogger(__name__)
WORKSPACE = PurePosixPath("/workspace")
MANIFEST_SUFFIX = ".manifest.json"
PROGRESS_EVERY = 0.5  # seconds between progress writes to the notebook row
LIVE_STATES = (State.STARTING, State.RUNNING, State.RESTARTING, State.STOPPING)


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
    """The volume's directory on this host: the project's cache, or the notebook's own.

    A cached volume serves one notebook at a time (its files belong to that
    notebook's user); a second notebook of the project running beside it
    gets its own copy, marked so that its push and clean-up find it.
    """
    if volume.get("cache") and not _uses_private_copy(notebook, index):
        return _cache_dir(notebook, volume)
    return _private_dir(notebook, index)


def _private_marker(notebook: Notebook, index: int) -> Path:
    return _private_dir(notebook, index).with_name(f"{index}.private")


def _uses_private_copy(notebook: Notebook, index: int) -> bool:
    return _private_marker(notebook, index).exists()


def _claim_cache(notebook: Notebook, index: int, volume: dict) -> None:
    """Use the project's cache unless another live notebook holds it."""
    holder_file = _cache_dir(notebook, volume).with_suffix(".holder")
    holder = holder_file.read_text().strip() if holder_file.exists() else ""
    live = (
        holder
        and holder != str(notebook.pk)
        and Notebook.objects.filter(pk=holder, state__in=LIVE_STATES).exists()
    )
    if live:
        marker = _private_marker(notebook, index)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        return
    holder_file.parent.mkdir(parents=True, exist_ok=True)
    holder_file.write_text(str(notebook.pk))


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


def _make_dirs(workspace: Path, target: Path, uid: int) -> None:
    """`target` and its missing parents below the workspace, owned by the notebook's user."""
    missing = []
    while target != workspace and not target.exists():
        missing.append(target)
        target = target.parent
    for path in reversed(missing):
        path.mkdir()
        if os.geteuid() == 0:
            os.lchown(path, uid, uid)


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


def _local_files(directory: Path) -> dict[str, os.stat_result]:
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                files[os.path.relpath(path, directory)] = st
    return files


def _transfer_manager(client):
    config = TransferConfig(
        multipart_threshold=settings.NBCLOUD_S3_PART_SIZE,
        multipart_chunksize=settings.NBCLOUD_S3_PART_SIZE,
        max_concurrency=settings.NBCLOUD_S3_CONCURRENCY,
        use_threads=True,
    )
    return create_transfer_manager(client, config)


def _unchanged(entry: dict | None, st: os.stat_result) -> bool:
    return bool(entry) and entry["size"] == st.st_size and entry["mtime_ns"] == st.st_mtime_ns


def pull_object_volume(notebook: Notebook, index: int, volume: dict, status: SyncStatus) -> Path:
    """Mirror the volume's objects into its directory; fetch only what changed."""
    store = _datastore(notebook, volume)
    directory = volume_dir(notebook, index, volume)
    directory.mkdir(parents=True, exist_ok=True)
    prefix = _prefix(volume)
    client = store.s3_client(max_pool_connections=settings.NBCLOUD_S3_CONCURRENCY * 2)
    try:
        remote = _list_objects(client, volume["container"], prefix)
        manifest = _read_manifest(directory)
        local = _local_files(directory)
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
        for rel in set(local) - set(remote):  # deleted remotely since the cache was filled
            (directory / rel).unlink()
            manifest.pop(rel, None)
        with _transfer_manager(client) as manager:
            futures = []
            for rel in wanted:
                target = directory / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                futures.append(
                    (
                        rel,
                        manager.download(
                            volume["container"],
                            prefix + rel,
                            str(target),
                            subscribers=[_Progress(status, index)],
                        ),
                    )
                )
            for done, (rel, future) in enumerate(futures, 1):
                future.result()
                st = os.stat(directory / rel)
                manifest[rel] = {
                    "etag": remote[rel]["etag"],
                    "size": st.st_size,
                    "mtime_ns": st.st_mtime_ns,
                }
                status.update(index, files_done=done)
    except (ClientError, BotoCoreError) as exc:
        raise _s3_error(volume, store, exc) from exc
    finally:
        client.close()
    _write_manifest(directory, manifest)
    os.utime(_manifest_path(directory))  # the cache's "last used"
    status.update(index, force=True, state="DONE")
    return directory


def _local_changes(directory: Path, volume: dict):
    """(manifest, local files, changed files, deleted files) of a pulled directory."""
    manifest = _read_manifest(directory)
    local = _local_files(directory)
    changed = [rel for rel, st in local.items() if not _unchanged(manifest.get(rel), st)]
    deleted = [rel for rel in manifest if rel not in local] if volume["permission"] == "RWD" else []
    return manifest, local, changed, deleted


def push_object_volume(
    notebook: Notebook, index: int, volume: dict, status: SyncStatus, entry: int
) -> None:
    """Upload new and changed files; with RWD also delete what the user deleted.

    `index` is the volume's place in the notebook's spec, `entry` its place in `status`.
    """
    store = _datastore(notebook, volume)
    directory = volume_dir(notebook, index, volume)
    if not directory.exists():
        status.update(entry, force=True, state="DONE", message="nothing pulled: nothing to push")
        return
    prefix = _prefix(volume)
    manifest, local, changed, deleted = _local_changes(directory, volume)
    status.update(
        entry,
        force=True,
        state="RUNNING",
        files_total=len(changed) + len(deleted),
        bytes_total=sum(local[r].st_size for r in changed),
    )
    client = store.s3_client(max_pool_connections=settings.NBCLOUD_S3_CONCURRENCY * 2)
    try:
        done = 0
        with _transfer_manager(client) as manager:
            futures = [
                manager.upload(
                    str(directory / rel),
                    volume["container"],
                    prefix + rel,
                    subscribers=[_Progress(status, entry)],
                )
                for rel in changed
            ]
            for future in futures:
                future.result()
                done += 1
                status.update(entry, files_done=done)
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
        if changed:
            # The ETags the store gave the new objects, for the next pull's comparison.
            remote = _list_objects(client, volume["container"], prefix)
            for rel in changed:
                if rel in remote:
                    manifest[rel] = {
                        "etag": remote[rel]["etag"],
                        "size": local[rel].st_size,
                        "mtime_ns": local[rel].st_mtime_ns,
                    }
    except (ClientError, BotoCoreError) as exc:
        _write_manifest(directory, manifest)  # what was deleted stays recorded as deleted
        raise _s3_error(volume, store, exc) from exc
    finally:
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


def clone_git_volume(
    notebook: Notebook, volume: dict, workspace: Path, status: SyncStatus, index: int
) -> None:
    """Clone at first start; later starts find the clone in the restored workspace."""
    import git

    target = _workspace_target(workspace, volume["mount_path"])
    if (target / ".git").exists():
        status.update(index, force=True, state="DONE", message="already cloned")
        return
    if target.exists() and any(target.iterdir()):
        raise VolumeError(
            f"volume {volume['spec']}: {volume['mount_path']} already holds files that are "
            "not a clone of this repository; move them or choose another mount path"
        )
    status.update(index, force=True, state="RUNNING")
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
        staging = target.with_name(f".{target.name}.cloning")
        shutil.rmtree(staging, ignore_errors=True)
        options = {"single_branch": True}
        if settings.NBCLOUD_GIT_CLONE_DEPTH:
            options["depth"] = settings.NBCLOUD_GIT_CLONE_DEPTH
        if volume["branch"]:
            options["branch"] = volume["branch"]
        try:
            _make_dirs(workspace, target.parent, notebook.sandbox_uid)
            git.Repo.clone_from(volume["url"], staging, env=env, **options)
        except git.GitCommandError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise VolumeError(
                _git_error(volume, store, str(exc.stderr or ""), list(secrets.values()))
            ) from None
    if target.exists():
        target.rmdir()  # empty, checked above
    staging.rename(target)
    chown_tree(target, notebook.sandbox_uid)
    files = sum(len(names) for _, _, names in os.walk(target))
    status.update(index, force=True, state="DONE", files_done=files, files_total=files)


# What the lifecycle calls.


def _pending_push(notebook: Notebook, index: int, volume: dict) -> bool:
    directory = volume_dir(notebook, index, volume)
    if volume["permission"] == "RO" or not directory.exists():
        return False
    _, _, changed, deleted = _local_changes(directory, volume)
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
            if volume.get("cache"):
                _claim_cache(notebook, index, volume)
            directory = pull_object_volume(notebook, index, volume, status)
            chown_tree(directory, notebook.sandbox_uid)
            os.chmod(directory, 0o700)
            target = _workspace_target(workspace, volume["mount_path"])
            _make_dirs(workspace, target, notebook.sandbox_uid)
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
    """Forget the private copies; cached volumes stay for the project's next notebook."""
    for index, volume in _object_volumes(notebook):
        if volume.get("cache") and not _uses_private_copy(notebook, index):
            holder_file = _cache_dir(notebook, volume).with_suffix(".holder")
            if holder_file.exists() and holder_file.read_text().strip() == str(notebook.pk):
                holder_file.unlink()
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
        holder = directory.with_suffix(".holder")
        if holder.exists():
            continue  # in use: its notebook refreshes it when it stops
        shutil.rmtree(directory, ignore_errors=True)
        manifest.unlink(missing_ok=True)
        removed += 1
    return removed
