"""A workspace's restore and chown never follow what a notebook (or an archive) planted.

A stored backup is made hostile (as a tampered archive would be) and restored
the way a start restores it (workspace.prepare), on both extraction paths; a
local workspace with planted links is given to the notebook's user. Each aims
at a root-owned 0600 secret in a 0700 directory; after each it is unchanged.
"""

import hashlib
import os
import stat
import tarfile

import pytest

from nbcloud.notebooks.models import Backup
from nbcloud.projects.models import Project
from support.factories import make_notebook
from support.security import ROOT_SECRET as SECRET
from support.security import tar_archive, tar_member
from workers import safefs, workspace

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the attacks are on root's file work: run the tests as root"
)


def _secret_state(vault):
    st = os.lstat(vault / "secret")
    return (st.st_ino, st.st_mode, st.st_uid, st.st_gid, (vault / "secret").read_bytes())


@pytest.fixture
def notebook(db, tmp_path, settings):
    settings.STORAGES = {
        **settings.STORAGES,
        "backups": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "backups")},
        },
    }
    settings.NBCLOUD_WORKSPACES_DIR = tmp_path / "workspaces"
    return make_notebook(Project.objects.create(name="restored"))


def _store(notebook, tmp_path, members) -> Backup:
    """A backup row whose archive holds `members` ((TarInfo, bytes | None)), checksum right."""
    raw = tar_archive(*members)
    name = f"{notebook.pk}/hostile.tar"
    (tmp_path / "backups" / str(notebook.pk)).mkdir(parents=True)
    (tmp_path / "backups" / name).write_bytes(raw)
    return Backup.objects.create(
        notebook=notebook,
        storage_name=name,
        size=len(raw),
        sha256=hashlib.sha256(raw).hexdigest(),
        workspace_size=0,
    )


def _attacks(vault):
    return {
        "write-through-symlink": [
            tar_member("work.txt", data=b"fine"),
            tar_member("out", tarfile.SYMTYPE, linkname=str(vault)),
            tar_member("out/secret", data=b"overwritten"),
        ],
        "hardlink-to-secret": [
            tar_member("work.txt", data=b"fine"),
            tar_member("mine", tarfile.LNKTYPE, linkname=str(vault / "secret")),
        ],
        "dotdot": [tar_member("../../vault/secret", data=b"overwritten")],
        "setuid-device": [tar_member("sh", tarfile.CHRTYPE, mode=0o4755)],
    }


@pytest.mark.parametrize(
    ("attack", "member"),
    [
        ("write-through-symlink", "out/secret"),
        ("hardlink-to-secret", "mine"),
        ("dotdot", "../../vault/secret"),
        ("setuid-device", "sh"),
    ],
)
def test_a_hostile_backup_is_refused_naming_the_member(
    notebook, tmp_path, vault, path_kind, attack, member
):
    _store(notebook, tmp_path, _attacks(vault)[attack])
    before = _secret_state(vault)

    with pytest.raises(workspace.UnsafeBackup) as refused:
        workspace.prepare(notebook)

    assert repr(member) in refused.value.user_message
    assert _secret_state(vault) == before
    assert os.listdir(vault) == ["secret"]
    assert os.listdir(tmp_path / "workspaces") == []  # no half workspace, no staging left


def test_a_restored_workspace_is_the_notebooks_hard_links_and_all(notebook, tmp_path, path_kind):
    _store(
        notebook,
        tmp_path,
        [
            tar_member("pkgs", tarfile.DIRTYPE, mode=0o755),
            tar_member("pkgs/lib.so", data=b"\x7fELF", mode=0o755),
            tar_member("env", tarfile.DIRTYPE, mode=0o755),
            tar_member("env/lib.so", tarfile.LNKTYPE, linkname="pkgs/lib.so"),
            tar_member("env/current", tarfile.SYMTYPE, linkname="../pkgs"),
        ],
    )
    path = workspace.prepare(notebook)
    uid = notebook.sandbox_uid
    for name in ("", "pkgs", "pkgs/lib.so", "env", "env/lib.so"):
        assert os.lstat(path / name).st_uid == uid, name
    assert os.lstat(path / "env" / "current").st_uid == uid
    assert os.stat(path / "env" / "lib.so").st_ino == os.stat(path / "pkgs" / "lib.so").st_ino
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700


def test_the_chown_of_a_local_workspace_never_follows_planted_links(notebook, tmp_path, vault):
    path = workspace.prepare(notebook)  # a fresh workspace, now the notebook's
    (path / "work.txt").write_text("mine")
    os.symlink(vault / "secret", path / "sym")
    os.symlink(vault, path / "dirlink")
    os.link(vault / "secret", path / "hard")
    (path / "sub").mkdir()
    os.symlink(vault, path / "sub" / "up")
    before = _secret_state(vault)

    workspace.prepare(notebook)  # the next start on this host: chowns the local copy

    ino, mode, uid, gid, content = before
    st = os.lstat(vault / "secret")
    assert (st.st_ino, st.st_mode, st.st_uid, st.st_gid) == (ino, mode, uid, gid)
    assert (vault / "secret").read_bytes() == content
    assert os.lstat(vault).st_uid == 0 and stat.S_IMODE(os.lstat(vault).st_mode) == 0o700
    owner = notebook.sandbox_uid
    assert os.lstat(path / "work.txt").st_uid == owner
    assert (path / "sub").stat().st_uid == owner


def test_the_chown_race_swapping_a_file_for_a_hard_link_gives_nothing_away(
    notebook, tmp_path, vault
):
    """Between the chown's look at a name and its change, the name becomes a hard link
    to the secret (and back), as fast as the kernel allows."""
    import ctypes
    import threading

    libc = ctypes.CDLL(None, use_errno=True)
    path = workspace.prepare(notebook)
    (path / "entry").write_bytes(b"root made me")  # root's: the chown gives it away
    os.link(vault / "secret", path / "swap")
    benign = os.open(path / "entry", os.O_RDONLY)
    stop, swaps = threading.Event(), [0]

    def swapper():
        while not stop.is_set():
            libc.renameat2(-100, bytes(path / "entry"), -100, bytes(path / "swap"), 2)
            swaps[0] += 1

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    try:
        for _ in range(300):
            os.fchown(benign, 0, 0)  # root's again: the next chown has work to do
            safefs.chown_tree(path, notebook.sandbox_uid)
            st = os.stat(vault / "secret")
            assert (st.st_uid, st.st_gid) == (0, 0)
    finally:
        stop.set()
        thread.join(10)
        os.close(benign)
    assert swaps[0] > 300
    assert stat.S_IMODE(os.stat(vault / "secret").st_mode) == 0o600
    assert (vault / "secret").read_bytes() == SECRET
