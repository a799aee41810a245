"""Git volumes: cloned into the workspace at first start.

`https://host/repo.git[@branch]:/workspace/path[:RO|RW]` is cloned so that the
clone and the user's work in it live with the workspace and its backups;
nbcloud never pushes to git. git runs in a root-only directory beside the
workspace (the notebook cannot reach it), and the finished clone is moved
into place through a handle opened without following links. A private
repository's credentials come from the project's git datastore for its host
and never reach a message, an event or a log line.
"""

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from django.conf import settings

from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.volumes import GitVolume
from nbcloud.projects.models import Datastore

from .. import safefs
from .errors import VolumeError
from .files import WORKSPACE
from .progress import SyncStatus

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


def _git_error(volume: GitVolume, store: Datastore | None, stderr: str, secrets: list[str]) -> str:
    host = urlsplit(volume.url).netloc.rsplit("@", 1)[-1]  # never a user name
    creds = f" of datastore {store.alias!r}; update its username and password" if store else ""
    if not store:
        creds = f"; a private repository needs a git datastore for host {host}"
    for pattern, text in GIT_ERRORS:
        if pattern.search(stderr):
            message = text.format(
                branch=volume.branch,
                creds=creds,
                creds_hint=", or add a git datastore if it is private" if not store else "",
                host=host,
            )
            return f"volume {volume.spec}: {message}"
    lines = [line.strip(" '") for line in stderr.splitlines()]
    last = next((line for line in reversed(lines) if line), "")
    for secret in secrets:
        last = last.replace(secret, "***")
    return f"volume {volume.spec}: git clone failed: {last.strip()[:300]}"


def _clone_target(workspace_fd: int, rel: str, volume: GitVolume) -> str:
    """What the workspace holds at the mount path: "absent", "empty" or "cloned"."""
    try:
        fd = safefs.open_dir(workspace_fd, rel)
    except FileNotFoundError:
        return "absent"
    except safefs.UnsafePath as exc:
        raise VolumeError(
            f"volume {volume.spec}: {volume.mount_path} is not a directory of the "
            f"workspace ({exc.strerror}); remove it or choose another mount path"
        ) from None
    try:
        with contextlib.suppress(FileNotFoundError):
            os.stat(".git", dir_fd=fd, follow_symlinks=False)
            return "cloned"
        if os.listdir(fd):
            raise VolumeError(
                f"volume {volume.spec}: {volume.mount_path} already holds files that "
                "are not a clone of this repository; move them or choose another mount path"
            )
        return "empty"
    finally:
        os.close(fd)


def clone_git_volume(
    notebook: Notebook, volume: GitVolume, workspace: Path, status: SyncStatus, index: int
) -> None:
    """Clone at first start; later starts find the clone in the restored workspace.

    git runs in a fresh root-only directory beside the workspace (same filesystem),
    the clone is given to the notebook's user there, then moved to its mount path
    through a handle on its parent opened without following links.
    """
    uid = notebook.sandbox_uid
    rel = PurePosixPath(volume.mount_path).relative_to(WORKSPACE).as_posix()
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
                    f"volume {volume.spec}: cannot place the clone at "
                    f"{volume.mount_path}: {exc.strerror}; remove it or choose another "
                    "mount path"
                ) from None
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise
                raise VolumeError(
                    f"volume {volume.spec}: {volume.mount_path} changed while cloning; "
                    "move what is there and start again"
                ) from None
            finally:
                os.close(private_fd)
        finally:
            shutil.rmtree(private, ignore_errors=True)
    finally:
        os.close(workspace_fd)
    status.update(index, force=True, state="DONE", files_done=files, files_total=files)


def _run_clone(notebook: Notebook, volume: GitVolume, staging: Path) -> None:
    """`git clone` into `staging` (in a root-only directory) with the datastore's credentials."""
    import git

    store = git_datastore(notebook, volume.url)
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
        if volume.branch:
            options["branch"] = volume.branch
        try:
            git.Repo.clone_from(volume.url, staging, env=env, **options)
        except git.GitCommandError as exc:
            raise VolumeError(
                _git_error(volume, store, str(exc.stderr or ""), list(secrets.values()))
            ) from None
