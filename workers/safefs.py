"""File work by root in trees a notebook controls, without following its links.

A notebook can plant symbolic links and hard links anywhere in its workspace
and its volumes, and swap a directory for a link while root works there. So
root never opens such a tree by path: it opens the tree's root directory once,
then every component beneath it relative to the directory above, with
`O_NOFOLLOW`; writes new files under a temporary name and renames them over
the final one (a rename replaces a planted link, never writes through it);
changes owners with `fchownat(..., AT_SYMLINK_NOFOLLOW)`; and uploads only
from a descriptor it opened that way.

Backups are extracted with tarfile's `data` filter where this Python has it
(3.11.4 and later) and an equivalent check of our own where it does not
(Debian 12's 3.11.2), plus one rule on both: no member is written through a
symbolic link. Symbolic links themselves may point anywhere (see
_strict_checks); hard links only to files of the archive.
"""

import contextlib
import copy
import errno
import logging
import os
import secrets
import stat
import tarfile
from pathlib import Path

log = logging.getLogger(__name__)

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
TEMP_PREFIX = ".nbcloud-tmp-"


class UnsafePath(OSError):
    """A path in a notebook's tree that root refuses to go through; says which and why."""


def _parts(rel: str) -> list[str]:
    """The components of a relative path; refuses absolute paths, `..` and empty names."""
    if not rel or rel.startswith("/"):
        raise UnsafePath(errno.EINVAL, f"{rel!r} is not a relative path")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise UnsafePath(errno.EINVAL, f"{rel!r} leaves its directory")
    return parts


def open_root(path: Path | str) -> int:
    """A directory handle on `path`, whose parents root controls; its last component
    must not be a link."""
    try:
        return os.open(path, DIR_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(exc.errno, f"{path} is not a directory (a link?)") from None
        raise


def _open_child_dir(parent_fd: int, name: str, rel: str) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(
                exc.errno, f"{rel}: {name!r} is a symbolic link or not a directory"
            ) from None
        raise


def open_dir(
    root_fd: int, rel: str, *, create: bool = False, uid: int | None = None, clear: bool = False
) -> int:
    """A handle on directory `rel` beneath `root_fd`, every component opened without
    following links. With `create`, missing ones are made (and given to `uid` if set);
    with `clear` too, a link or file in the way is removed first (a mirror's directory
    wins), else UnsafePath names it. The caller closes the handle."""
    fd = os.dup(root_fd)
    try:
        for name in _parts(rel):
            try:
                child = _open_child_dir(fd, name, rel)
            except FileNotFoundError:
                if not create:
                    raise
                child = _make_child_dir(fd, name, rel, uid)
            except UnsafePath:
                if not (create and clear):
                    raise
                remove(fd, name)
                child = _make_child_dir(fd, name, rel, uid)
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _make_child_dir(parent_fd: int, name: str, rel: str, uid: int | None) -> int:
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o755, dir_fd=parent_fd)
    child = _open_child_dir(parent_fd, name, rel)
    if uid is not None and os.geteuid() == 0:
        os.fchown(child, uid, uid)
    return child


@contextlib.contextmanager
def parent_of(root_fd: int, rel: str, **open_dir_options):
    """(handle on the directory holding `rel`, last component's name); see open_dir."""
    parts = _parts(rel)
    fd = open_dir(root_fd, "/".join(parts[:-1]), **open_dir_options) if parts[1:] else None
    try:
        yield (root_fd if fd is None else fd), parts[-1]
    finally:
        if fd is not None:
            os.close(fd)


def open_regular(root_fd: int, rel: str) -> int:
    """A read handle on regular file `rel` beneath `root_fd`; refuses links, fifos, devices."""
    with parent_of(root_fd, rel) as (dir_fd, name):
        try:
            fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePath(exc.errno, f"{rel} is a symbolic link") from None
            raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePath(errno.EINVAL, f"{rel} is not a regular file")
    os.set_blocking(fd, True)
    return fd


def new_file(dir_fd: int) -> tuple[int, str]:
    """A new empty file (0600) under a fresh temporary name in `dir_fd`; (fd, name)."""
    while True:
        name = TEMP_PREFIX + secrets.token_hex(8)
        try:
            return os.open(name, NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd), name
        except FileExistsError:
            continue


def replace(dir_fd: int, temp: str, name: str) -> None:
    """Move `temp` over `name` in `dir_fd`: a link or file there is replaced, not followed;
    a directory there is removed first (a mirror's file wins over the user's directory)."""
    try:
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except IsADirectoryError:
        remove(dir_fd, name)
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def remove(dir_fd: int, name: str) -> None:
    """Remove `name` in `dir_fd` whatever it is; a directory's tree without following links."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        import shutil

        shutil.rmtree(name, dir_fd=dir_fd)  # the fd-based, link-safe implementation on Linux
    else:
        os.unlink(name, dir_fd=dir_fd)


def regular_files(root_fd: int) -> dict[str, os.stat_result]:
    """{relative path: lstat} of the regular files beneath `root_fd`; links are not followed
    (os.fwalk checks each directory it enters is the one it listed)."""
    found = {}
    for dirpath, _, names, fd in os.fwalk(".", dir_fd=root_fd, follow_symlinks=False):
        prefix = "" if dirpath == "." else dirpath[2:] + "/"
        for name in names:
            if name.startswith(TEMP_PREFIX):
                continue
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                found[prefix + name] = st
    return found


def chown_tree(path: Path | str, uid: int, *, trusted: bool = False) -> None:
    """Give `path` and everything beneath it to `uid` (as root; elsewhere nothing to do).

    Never follows a link. Each entry is opened without following links and changed
    through its handle, so swapping a name for a link between the look and the change
    changes nothing outside. A file with other hard links that is not the notebook's
    could be a link to a file outside the tree: it keeps its owner (with a warning);
    so do symbolic links (a link's owner gives nothing, and changing it by name races).
    With `trusted` (a tree root made itself where the notebook cannot reach: a fresh
    clone or extraction) everything is changed by name, links included.
    """
    if os.geteuid() != 0:
        return
    root_fd = open_root(path)
    try:
        os.fchown(root_fd, uid, uid)
        for dirpath, dirs, files, fd in os.fwalk(".", dir_fd=root_fd, follow_symlinks=False):
            for name in dirs + files:
                if trusted:
                    os.chown(name, uid, uid, dir_fd=fd, follow_symlinks=False)
                else:
                    _chown_entry(fd, name, uid, f"{path}/{dirpath[2:]}")
    finally:
        os.close(root_fd)


def _chown_entry(dir_fd: int, name: str, uid: int, where: str) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if (st.st_uid, st.st_gid) == (uid, uid) or stat.S_ISLNK(st.st_mode):
            return
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except OSError:  # gone, a link swapped in (ELOOP), a socket: nothing to give
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            log.warning(
                "not giving %s/%s to uid %d: it has %d hard links", where, name, uid, st.st_nlink
            )
            return
        os.fchown(fd, uid, uid)
    finally:
        os.close(fd)


def copy_file(src_fd: int, dst_fd: int) -> None:
    """Copy one open file into another (in the kernel where it can)."""
    offset = 0
    size = os.fstat(src_fd).st_size
    while offset < size:
        try:
            sent = os.copy_file_range(src_fd, dst_fd, size - offset, offset, offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            sent = 0
        if sent == 0:
            break
        offset += sent
    while True:  # what copy_file_range could not do (or a file that grew)
        data = os.pread(src_fd, 1024 * 1024, offset)
        if not data:
            break
        os.pwrite(dst_fd, data, offset)
        offset += len(data)


# Backups: safe tar extraction on every Python 3.11.


class UnsafeArchive(ValueError):
    """An archive member refused at extraction; the message names it."""


def _strict_checks(member: tarfile.TarInfo, dest: str) -> None:
    """Ours, on both paths: a safe relative name, no member written through a symbolic
    link, no device or fifo, hard links only to files of the tree.

    A symbolic link may point anywhere (a venv's `bin/python3 -> /usr/bin/python3`):
    it is extracted as a link, nothing is ever written through it, and after the
    restore root never follows a link of the workspace; the notebook could make
    the same link itself."""
    name = member.name
    if name.startswith("/") or os.path.isabs(name):
        raise UnsafeArchive(f"member {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"member {name!r} would be extracted outside the destination")
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        raise UnsafeArchive(f"member {name!r} is a device or fifo")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeArchive(f"member {name!r} is of an unsupported type")
    here = dest
    for part in parts[:-1]:
        here = os.path.join(here, part)
        if os.path.islink(here):
            raise UnsafeArchive(f"member {name!r} would be written through a symbolic link")
    if member.islnk():
        target = member.linkname
        norm = os.path.normpath(target)
        if target.startswith("/") or norm == ".." or norm.startswith("../"):
            raise UnsafeArchive(f"member {name!r} is a hard link out of the destination")
        here = dest
        for part in norm.split("/"):
            here = os.path.join(here, part)
            if os.path.islink(here):
                raise UnsafeArchive(f"member {name!r} is a hard link through a symbolic link")
        if not os.path.isfile(here):
            raise UnsafeArchive(f"member {name!r} is a hard link to no file of the archive")


def _sanitized(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """What tarfile's `data` filter makes of a checked member, for Pythons without it."""
    clean = copy.copy(member)
    clean.name = "/".join(p for p in member.name.split("/") if p not in ("", "."))
    mode = member.mode & 0o755  # no setuid, setgid, sticky, group or world write
    if member.isfile() or member.islnk():
        if not mode & 0o100:
            mode &= ~0o111
        mode |= 0o600
    elif member.isdir():
        mode |= 0o700
    clean.mode = mode
    uid, gid = os.geteuid(), os.getegid()
    clean.uid, clean.gid, clean.uname, clean.gname = uid, gid, "", ""
    return clean


def _data_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """tarfile's `data` filter, but for a symbolic link's target (see _strict_checks)."""
    if member.issym():
        clean = tarfile.tar_filter(member, dest)
        return clean.replace(uid=None, gid=None, uname=None, gname=None, deep=False)
    return tarfile.data_filter(member, dest)


def _clear_way(dest: str, member: tarfile.TarInfo) -> None:
    """A non-directory already at a member's place goes (it is never written through)."""
    path = os.path.join(dest, member.name)
    if os.path.lexists(path) and not (member.isdir() and not os.path.islink(path)):
        if os.path.isdir(path) and not os.path.islink(path):
            raise UnsafeArchive(f"member {member.name!r} would replace a directory")
        os.unlink(path)


def extract_tar(archive: tarfile.TarFile, dest: Path | str) -> None:
    """Extract every member of `archive` (a stream works) into `dest`, or raise
    UnsafeArchive naming the first member refused."""
    dest = os.path.realpath(dest)
    if hasattr(tarfile, "data_filter"):
        try:
            for member in archive:
                _strict_checks(member, dest)
                _clear_way(dest, member)
                archive.extract(member, dest, filter=_data_filter)
        except tarfile.FilterError as exc:
            raise UnsafeArchive(f"member {exc.tarinfo.name!r} refused: {exc}") from None
        return
    for member in archive:
        _strict_checks(member, dest)
        clean = _sanitized(member)
        _clear_way(dest, clean)
        archive.extract(clean, dest, set_attrs=True, numeric_owner=True)
