"""Links a notebook plants in its volumes and workspace never lead root's file work out.

Real moto_server and a real git daemon on loopback. Each attack aims at a
root-owned 0600 secret in a 0700 directory the test makes (the "vault"): the
notebook plants symbolic links and hard links to it, or swaps a directory for
a link to it while a push runs, on every volume kind (RO, RW, RWD, cached, git).
After each: the secret is unchanged, nothing appeared in the vault, and no
object in the bucket holds the secret.
"""

import contextlib
import ctypes
import os
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest

from nbcloud.notebooks.spec import parse_volume
from nbcloud.projects.models import Project
from support.factories import make_notebook, make_s3_datastore
from workers import volumes, workspace

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the attacks are on root's file work: run the tests as root"
)

BUCKET = "attacked"
SECRET = b"the platform's secret_key: 7f3c9a...\n"


@pytest.fixture
def vault(tmp_path):
    """A 0700 directory of root's with a 0600 secret and an empty drop directory."""
    vault = tmp_path / "vault"
    vault.mkdir(mode=0o700)
    (vault / "secret").write_bytes(SECRET)
    (vault / "secret").chmod(0o600)
    (vault / "drop").mkdir(mode=0o700)
    return vault


def _vault_state(vault: Path) -> dict:
    state = {}
    for root, dirs, files in os.walk(vault):
        for name in [*dirs, *files, "."]:
            path = os.path.join(root, name)
            st = os.lstat(path)
            content = Path(path).read_bytes() if stat.S_ISREG(st.st_mode) else None
            state[path] = (st.st_mode, st.st_uid, st.st_gid, st.st_nlink, content)
    return state


@pytest.fixture
def untouched(vault):
    """Call it after an attack: the vault is as it was (beyond the links the attack made
    to the secret, counted by `extra_links`)."""
    before = _vault_state(vault)
    ino = os.stat(vault / "secret").st_ino

    def check(extra_links: int = 0):
        after = _vault_state(vault)
        secret = str(vault / "secret")
        mode, uid, gid, nlink, content = before[secret]
        assert after.pop(secret) == (mode, uid, gid, nlink + extra_links, content)
        before_rest = {k: v for k, v in before.items() if k != secret}
        assert {k: v[:3] + v[4:] for k, v in after.items()} == {
            k: v[:3] + v[4:] for k, v in before_rest.items()
        }
        assert os.stat(secret).st_ino == ino

    return check


@pytest.fixture
def s3(s3_bucket):
    return s3_bucket(BUCKET)


@pytest.fixture
def project(db, s3_endpoint, settings, tmp_path):
    settings.NBCLOUD_VOLUMES_DIR = tmp_path / "volumes"
    settings.NBCLOUD_VOLUME_CACHE_DIR = tmp_path / "cache"
    settings.NBCLOUD_WORKSPACES_DIR = tmp_path / "workspaces"
    project = Project.objects.create(name="attacked")
    make_s3_datastore(project, s3_endpoint)
    return project


def _notebook(project, spec):
    return make_notebook(project, volumes=[parse_volume(spec).to_dict()])


def _bodies(s3) -> dict[str, bytes]:
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            found[item["Key"]] = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
    return found


def _leaked(s3) -> list[str]:
    return [key for key, body in _bodies(s3).items() if SECRET.strip() in body]


def _workspace(notebook) -> Path:
    path = workspace.prepare(notebook)
    assert path == workspace.local_path(notebook)
    return path


def _data(notebook) -> Path:
    return volumes.volume_dir(notebook, 0)


KINDS = ["RO", "RW", "RWD", "RO:cache", "RW:cache"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_pull_replaces_planted_links_and_never_writes_through_them(
    project, s3, vault, untouched, kind
):
    for key in ("sub/inner.txt", "top.txt", "hard.txt"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"v1 " + key.encode())
    notebook = _notebook(project, f"{BUCKET}@store:/workspace/data:{kind}")
    volumes.prepare(notebook, _workspace(notebook))
    data = _data(notebook)
    # The notebook plants links where the next pull writes.
    shutil.rmtree(data / "sub")
    os.symlink(vault / "drop", data / "sub")
    (data / "top.txt").unlink()
    os.symlink(vault / "secret", data / "top.txt")
    (data / "hard.txt").unlink()
    os.link(vault / "secret", data / "hard.txt")
    for key in ("sub/inner.txt", "top.txt", "hard.txt"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"v2 " + key.encode())

    volumes.prepare(notebook, workspace.local_path(notebook))  # the next (or in-place) start

    untouched()
    assert _leaked(s3) == []
    secret_ino = os.stat(vault / "secret").st_ino
    for path in data.rglob("*"):
        assert path.is_symlink() or path.stat().st_ino != secret_ino
    if kind != "RWD":  # (RWD: the push before the pull deleted what the links replaced)
        assert not (data / "sub").is_symlink()
        for key in ("sub/inner.txt", "top.txt", "hard.txt"):
            assert not (data / key).is_symlink()
            assert (data / key).read_bytes() == b"v2 " + key.encode()
    cache = volumes.cache.cache_dir(notebook, notebook.volume_values[0])
    if kind.endswith("cache"):
        assert not any(p.is_symlink() for p in cache.rglob("*"))
        assert all(p.stat().st_uid == 0 for p in cache.rglob("*"))
        assert (cache / "top.txt").read_bytes() == b"v2 top.txt"


def test_a_cached_copy_is_never_bound_nor_shared(project, s3, vault, untouched):
    s3.put_object(Bucket=BUCKET, Key="0.bin", Body=b"zero")
    s3.put_object(Bucket=BUCKET, Key="d/1.bin", Body=b"one")
    spec = f"{BUCKET}@store:/workspace/data:RW:cache"
    first = _notebook(project, spec)
    [mine] = volumes.prepare(first, _workspace(first))
    cache = volumes.cache.cache_dir(first, first.volume_values[0])
    assert not mine.source.startswith(str(cache.parent))
    # The first notebook plants links in its copy, then the second starts beside it.
    (Path(mine.source) / "0.bin").unlink()
    os.symlink(vault / "secret", Path(mine.source) / "0.bin")
    shutil.rmtree(Path(mine.source) / "d")
    os.symlink(vault / "drop", Path(mine.source) / "d")
    second = _notebook(project, spec)
    [theirs] = volumes.prepare(second, _workspace(second))

    untouched()
    assert theirs.source != mine.source
    assert (Path(theirs.source) / "0.bin").read_bytes() == b"zero"
    assert not (Path(theirs.source) / "0.bin").is_symlink()
    assert (Path(theirs.source) / "d" / "1.bin").read_bytes() == b"one"
    assert not any(p.is_symlink() for p in cache.rglob("*"))
    assert (cache.parent.stat().st_mode & 0o777) == 0o700
    assert _leaked(s3) == []


@pytest.mark.parametrize("kind", ["RW", "RWD", "RW:cache"])
def test_a_push_never_sends_what_a_link_points_at(project, s3, vault, untouched, kind):
    s3.put_object(Bucket=BUCKET, Key="kept.txt", Body=b"kept")
    notebook = _notebook(project, f"{BUCKET}@store:/workspace/data:{kind}")
    volumes.prepare(notebook, _workspace(notebook))
    data = _data(notebook)
    (data / "mine.txt").write_bytes(b"the notebook's own work")
    os.symlink(vault / "secret", data / "leak.txt")
    os.symlink(vault, data / "leakdir")
    os.link(vault / "secret", data / "hard.txt")

    volumes.push(notebook)

    untouched(extra_links=1)  # the hard link itself, still in the volume
    objects = _bodies(s3)
    assert objects["mine.txt"] == b"the notebook's own work"
    assert _leaked(s3) == []
    assert not {"leak.txt", "hard.txt"} & set(objects)
    assert not [k for k in objects if k.startswith("leakdir")]


def _exchange(a: Path, b: Path) -> None:
    """Swap two names atomically (renameat2 RENAME_EXCHANGE): each always names something."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, bytes(a), at_fdcwd, bytes(b), rename_exchange) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))


# Progress is written from the transfer threads: no test transaction may hold SQLite's lock.
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["RW", "RWD"])
def test_the_push_race_swapping_a_directory_for_a_link_sends_nothing_outside(
    project, s3, vault, untouched, kind
):
    """`d/secret` is a file of the notebook's while the push lists the volume; then `d`
    becomes a link to the vault's directory, and back, as fast as the kernel allows."""
    notebook = _notebook(project, f"{BUCKET}@store:/workspace/data:{kind}")
    volumes.prepare(notebook, _workspace(notebook))
    data = _data(notebook)
    (data / "d").mkdir()
    (data / "d" / "secret").write_bytes(b"benign")
    for i in range(20):
        (data / "d" / f"f{i}").write_bytes(b"filler")
    os.symlink(vault, data / "swap")
    real = os.open(data / "d", os.O_RDONLY | os.O_DIRECTORY)
    stop = threading.Event()
    swaps = 0
    by_path = 0  # what a path-based reader gets: proof the race is there to win

    def swapper():
        nonlocal swaps, by_path
        while not stop.is_set():
            _exchange(data / "d", data / "swap")
            swaps += 1
            if swaps % 50 == 1:  # an odd count: `d` is the link now
                with contextlib.suppress(OSError):
                    by_path += (data / "d" / "secret").read_bytes() == SECRET

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        pushes = sent = 0
        while pushes < 40 and time.monotonic() < deadline:
            stamp = time.time_ns()
            os.utime("secret", dir_fd=real, ns=(stamp, stamp))  # changed: to be sent again
            volumes.push(notebook)
            pushes += 1
            bodies = _bodies(s3)
            sent += b"benign" in bodies.values()
            assert not [key for key, body in bodies.items() if SECRET.strip() in body]
    finally:
        stop.set()
        thread.join(10)
        os.close(real)
    if (data / "d").is_symlink():
        _exchange(data / "d", data / "swap")

    untouched()
    assert swaps > 100 and pushes >= 10
    assert by_path > 0, "the race was never open: the test proves nothing"
    assert _leaked(s3) == []
    assert sent > 0  # the pushes did send the notebook's own file


def test_a_mount_point_planted_as_a_link_is_refused(project, s3, vault, untouched):
    s3.put_object(Bucket=BUCKET, Key="a.txt", Body=b"a")
    notebook = _notebook(project, f"{BUCKET}@store:/workspace/deep/data:RW")
    path = _workspace(notebook)
    os.symlink(vault / "drop", path / "deep")
    with pytest.raises(volumes.VolumeError, match="/workspace/deep/data") as refused:
        volumes.prepare(notebook, path)
    assert "remove it" in str(refused.value)
    untouched()


# Git.


@pytest.fixture
def git_trust(monkeypatch):
    """Clones belong to the notebook's user: let the test (root) read them."""
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "safe.directory")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "*")


@pytest.mark.parametrize(
    ("plant", "mount"),
    [
        ("code", "/workspace/code/demo"),  # a parent of the mount path
        ("demo", "/workspace/demo"),  # the mount path itself (to an empty directory)
    ],
)
def test_a_clone_never_lands_through_a_planted_link(
    project, git_daemon, vault, untouched, git_trust, plant, mount
):
    notebook = _notebook(project, f"{git_daemon}/demo.git:{mount}:RW")
    path = _workspace(notebook)
    os.symlink(vault / "drop", path / plant)
    os.symlink(vault / "drop", path / ".demo.cloning")  # where clones used to be staged
    with pytest.raises(volumes.VolumeError, match=mount):
        volumes.prepare(notebook, path)
    untouched()
    assert os.listdir(vault / "drop") == []
    assert not list(path.parent.glob(".*clone*"))  # the private staging is gone too


def test_a_restart_after_a_clone_never_gives_root_files_away(
    project, git_daemon, vault, untouched, git_trust
):
    notebook = _notebook(project, f"{git_daemon}/demo.git:/workspace/demo:RW")
    path = _workspace(notebook)
    volumes.prepare(notebook, path)
    clone = path / "demo"
    uid = notebook.sandbox_uid
    assert (clone / "README.md").stat().st_uid == uid
    assert (clone / ".git").stat().st_uid == uid
    assert (clone.stat().st_mode & 0o777) != 0  # in place, a real directory
    assert not clone.is_symlink()
    # The notebook plants links into its clone, then restarts (workspace chown + clone check).
    os.link(vault / "secret", clone / "hard")
    os.symlink(vault / "secret", clone / "sym")
    os.symlink(vault, clone / "dir")
    workspace.prepare(notebook)
    volumes.prepare(notebook, path)

    untouched(extra_links=1)
    assert (clone / "README.md").stat().st_uid == uid
