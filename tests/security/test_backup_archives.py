"""Hostile backup archives against the extraction every restore uses (workers.safefs).

Both paths: tarfile's `data` filter where this Python has it, and our own
equivalent where it does not (Debian 12's 3.11.2; forced here by removing
`tarfile.data_filter`). Each archive aims at a root-owned 0600 secret in a 0700
directory beside the destination; after each, the secret is unchanged, nothing
appeared outside the destination, and the refusal names the member.

Only the standard library and workers.safefs: this file also runs on Debian's
own /usr/bin/python3 (`pytest --noconftest -p support.security
tests/security/test_backup_archives.py`).
"""

import io
import os
import stat
import tarfile

import pytest

from support.security import ROOT_SECRET as SECRET
from support.security import tar_archive, tar_member
from workers import safefs


def _state(tmp_path, dest):
    """Everything under tmp_path except the destination: (path, type, size, mode, uid, mtime)."""
    seen = {}
    for root, dirs, files in os.walk(tmp_path):
        if os.path.realpath(root).startswith(os.path.realpath(dest)):
            continue
        for name in dirs + files:
            path = os.path.join(root, name)
            if path == str(dest):
                continue
            st = os.lstat(path)
            seen[path] = (
                stat.S_IFMT(st.st_mode),
                st.st_size,
                st.st_mode,
                st.st_uid,
                st.st_mtime_ns,
            )
    return seen


def _extract(raw: bytes, dest) -> None:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|*") as archive:
        safefs.extract_tar(archive, dest)


def _hostile(vault):
    secret = str(vault / "secret")
    return {
        "dotdot": (
            [tar_member("ok.txt", data=b"fine"), tar_member("../escape.txt", data=b"x")],
            "../",
        ),
        "absolute": ([tar_member(str(vault / "planted.txt"), data=b"x")], "planted.txt"),
        "through-absolute-symlink": (
            [
                tar_member("out", tarfile.SYMTYPE, linkname=str(vault)),
                tar_member("out/planted.txt", data=b"x"),
            ],
            "out/planted.txt",
        ),
        "through-symlink": (
            [
                tar_member("inner", tarfile.DIRTYPE, mode=0o755),
                tar_member("inner/up", tarfile.SYMTYPE, linkname="../.."),
                tar_member("inner/up/vault/secret", data=b"overwritten"),
            ],
            "inner/up",
        ),
        "hardlink-through-symlink": (
            [
                tar_member("out", tarfile.SYMTYPE, linkname=str(vault)),
                tar_member("hl", tarfile.LNKTYPE, linkname="out/secret"),
            ],
            "hl",
        ),
        "hardlink-absolute": ([tar_member("hl", tarfile.LNKTYPE, linkname=secret)], "hl"),
        "hardlink-up": ([tar_member("hl", tarfile.LNKTYPE, linkname="../vault/secret")], "hl"),
        "chardev": ([tar_member("null", tarfile.CHRTYPE)], "null"),
        "fifo": ([tar_member("pipe", tarfile.FIFOTYPE)], "pipe"),
    }


@pytest.mark.parametrize(
    "attack",
    [
        "dotdot",
        "absolute",
        "through-absolute-symlink",
        "through-symlink",
        "hardlink-through-symlink",
        "hardlink-absolute",
        "hardlink-up",
        "chardev",
        "fifo",
    ],
)
def test_hostile_member_is_refused_by_name_and_nothing_lands_outside(
    attack, path_kind, vault, tmp_path
):
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    members, named = _hostile(vault)[attack]
    before = _state(tmp_path, dest)

    with pytest.raises(safefs.UnsafeArchive) as refused:
        _extract(tar_archive(*members), dest)

    assert named in str(refused.value)
    assert (vault / "secret").read_bytes() == SECRET
    assert _state(tmp_path, dest) == before  # nothing new, changed or re-owned outside
    assert os.listdir(vault) == ["secret"]


def test_symlinks_out_are_kept_as_links_and_nothing_is_written_through_them(
    path_kind, vault, tmp_path
):
    """A venv's `bin/python3 -> /usr/bin/python3` must restore: a symbolic link may point
    anywhere, it is only never followed (by extraction, or by root afterwards)."""
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    before = _state(tmp_path, dest)
    raw = tar_archive(
        tar_member("venv", tarfile.DIRTYPE, mode=0o755),
        tar_member("venv/python3", tarfile.SYMTYPE, linkname="/usr/bin/python3"),
        tar_member("up", tarfile.SYMTYPE, linkname="../vault"),
        tar_member("name", tarfile.SYMTYPE, linkname=str(vault / "secret")),
        tar_member("name", data=b"replaces the link, not what it points at"),
    )
    _extract(raw, dest)
    assert os.readlink(dest / "venv" / "python3") == "/usr/bin/python3"
    assert os.readlink(dest / "up") == "../vault"
    assert not (dest / "name").is_symlink()
    assert (dest / "name").read_bytes() == b"replaces the link, not what it points at"
    assert (vault / "secret").read_bytes() == SECRET
    assert _state(tmp_path, dest) == before


def test_setuid_setgid_and_sticky_bits_are_stripped(path_kind, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    raw = tar_archive(
        tar_member("suid", data=b"#!/bin/sh\n", mode=0o6755),
        tar_member("dir", tarfile.DIRTYPE, mode=0o1777),
        tar_member("dir/plain", data=b"x", mode=0o666),
    )
    _extract(raw, dest)
    assert stat.S_IMODE((dest / "suid").stat().st_mode) == 0o755
    assert not (dest / "dir").stat().st_mode & (stat.S_ISVTX | stat.S_IWOTH)
    assert stat.S_IMODE((dest / "dir" / "plain").stat().st_mode) & 0o022 == 0


def test_an_ordinary_workspace_archive_extracts_whole(path_kind, tmp_path):
    """What GNU tar makes of a workspace: dirs, files, an inner symlink and an inner hard link."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "pkg" / "sub").mkdir(parents=True)
    (src / "pkg" / "sub" / "mod.py").write_text("X = 1\n")
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    os.symlink("pkg/sub/mod.py", src / "link")
    os.link(src / "run.sh", src / "hard")
    dest.mkdir()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.add(src, arcname=".")
    _extract(out.getvalue(), dest)
    assert (dest / "pkg" / "sub" / "mod.py").read_text() == "X = 1\n"
    assert os.readlink(dest / "link") == "pkg/sub/mod.py"
    assert os.stat(dest / "hard").st_ino == os.stat(dest / "run.sh").st_ino
    assert os.access(dest / "run.sh", os.X_OK)
