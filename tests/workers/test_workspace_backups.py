"""Workspace backups: streamed, checksummed, atomic, pruned."""

import os
import tarfile

import pytest
from django.core.files.storage import FileSystemStorage, storages

from nbcloud.notebooks.models import Backup
from nbcloud.projects.models import Project
from support.factories import make_notebook
from workers import workspace


@pytest.fixture
def notebook(db):
    return make_notebook(Project.objects.create(name="ws"))


@pytest.fixture
def backups_dir(tmp_path, settings):
    settings.STORAGES = {
        **settings.STORAGES,
        "backups": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "backups")},
        },
    }
    settings.NBCLOUD_WORKSPACES_DIR = tmp_path / "workspaces"
    return tmp_path / "backups"


def _fill(path):
    (path / "src" / "deep").mkdir(parents=True)
    (path / "notes.txt").write_text("hello")
    (path / "src" / "deep" / "blob.bin").write_bytes(os.urandom(300_000))
    (path / ".local" / "lib").mkdir(parents=True)
    (path / ".local" / "lib" / "pkg.py").write_text("X = 1\n")
    os.symlink("notes.txt", path / "link")


def _snapshot(path):
    return {
        str(p.relative_to(path)): (
            p.read_bytes()
            if p.is_file() and not p.is_symlink()
            else os.readlink(p)
            if p.is_symlink()
            else None
        )
        for p in sorted(path.rglob("*"))
    }


def test_backup_then_restore_gives_back_the_same_tree(notebook, backups_dir):
    path = workspace.prepare(notebook)
    assert path.stat().st_mode & 0o777 == 0o700
    _fill(path)
    before = _snapshot(path)
    record = workspace.backup(notebook)
    assert record.workspace_size >= 300_000
    assert (backups_dir / record.storage_name).stat().st_size == record.size
    workspace.remove_local(notebook)
    assert not path.exists()

    restored = workspace.prepare(notebook)
    assert _snapshot(restored) == before
    assert restored.stat().st_uid == notebook.sandbox_uid
    assert (restored / "src" / "deep" / "blob.bin").stat().st_uid == notebook.sandbox_uid


def test_local_copy_wins_over_the_backup(notebook, backups_dir):
    path = workspace.prepare(notebook)
    (path / "a.txt").write_text("old")
    workspace.backup(notebook)
    (path / "a.txt").write_text("newer, not yet saved")
    assert (workspace.prepare(notebook) / "a.txt").read_text() == "newer, not yet saved"


def test_corrupt_backup_is_refused_and_leaves_nothing(notebook, backups_dir):
    path = workspace.prepare(notebook)
    _fill(path)
    record = workspace.backup(notebook)
    workspace.remove_local(notebook)
    archive = backups_dir / record.storage_name
    data = bytearray(archive.read_bytes())
    data[-20] ^= 0xFF
    archive.write_bytes(bytes(data))
    # A bad gzip CRC or the checksum, whichever is noticed first: "corrupt" either way.
    with pytest.raises(workspace.StartError, match="corrupt") as failed:
        workspace.prepare(notebook)
    cause = (OSError, EOFError, tarfile.TarError, workspace.ChecksumMismatch)
    assert isinstance(failed.value.__cause__, cause)
    assert not path.exists()
    assert not list(path.parent.glob(".*restoring"))


def test_checksum_mismatch_is_refused(notebook, backups_dir):
    path = workspace.prepare(notebook)
    (path / "f").write_text("x")
    record = workspace.backup(notebook)
    workspace.remove_local(notebook)
    Backup.objects.filter(pk=record.pk).update(sha256="0" * 64)
    with pytest.raises(workspace.StartError, match="corrupt") as failed:
        workspace.prepare(notebook)
    assert isinstance(failed.value.__cause__, workspace.ChecksumMismatch)
    assert not path.exists()


class FailingStorage(FileSystemStorage):
    """Breaks after the first chunk, like a network error mid-upload."""

    def _save(self, name, content):
        chunks = content.chunks(chunk_size=64 * 1024)
        next(chunks)
        full = self.path(name)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as partial:
            partial.write(b"partial")
        raise ConnectionResetError("connection reset by peer")


def test_failed_upload_leaves_no_partial_backup(notebook, backups_dir, settings):
    path = workspace.prepare(notebook)
    _fill(path)
    settings.STORAGES = {
        **settings.STORAGES,
        "backups": {
            "BACKEND": f"{__name__}.FailingStorage",
            "OPTIONS": {"location": str(backups_dir)},
        },
    }
    assert isinstance(storages["backups"], FailingStorage)
    with pytest.raises(ConnectionResetError):
        workspace.backup(notebook)
    assert Backup.objects.count() == 0
    assert [p for p in backups_dir.rglob("*") if p.is_file()] == []
    assert (path / "notes.txt").read_text() == "hello"  # the workspace is untouched


def test_retention_keeps_the_newest_backups(notebook, backups_dir, settings):
    settings.NBCLOUD_BACKUP_RETENTION = 2
    path = workspace.prepare(notebook)
    for i in range(4):
        (path / "n.txt").write_text(str(i))
        workspace.backup(notebook)
    kept = list(notebook.backups.all())
    assert len(kept) == 2
    files = sorted(p.name for p in backups_dir.rglob("*.tar"))
    assert files == sorted(b.storage_name.rsplit("/", 1)[1] for b in kept)
    workspace.remove_local(notebook)
    assert (workspace.prepare(notebook) / "n.txt").read_text() == "3"


def test_gzip_archives_when_configured_and_either_restores(notebook, backups_dir, settings):
    path = workspace.prepare(notebook)
    (path / "text.txt").write_text("compressible " * 10_000)
    plain = workspace.backup(notebook)
    settings.NBCLOUD_BACKUP_COMPRESSION = "gzip"
    (path / "text.txt").write_text("compressible, again " * 10_000)
    gzipped = workspace.backup(notebook)
    assert plain.storage_name.endswith(".tar") and gzipped.storage_name.endswith(".tar.gz")
    assert gzipped.size < plain.size / 10
    workspace.remove_local(notebook)
    assert (workspace.prepare(notebook) / "text.txt").read_text().startswith("compressible, again")
    workspace.remove_local(notebook)
    gzipped.delete()
    settings.NBCLOUD_BACKUP_COMPRESSION = "none"
    assert (workspace.prepare(notebook) / "text.txt").read_text().startswith("compressible ")


def _two_backups(notebook):
    path = workspace.prepare(notebook)
    (path / "notes.txt").write_text("first")
    older = workspace.backup(notebook)
    (path / "notes.txt").write_text("second")
    (path / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    latest = workspace.backup(notebook)
    workspace.remove_local(notebook)
    return older, latest


def test_a_corrupt_latest_backup_is_a_clear_error_that_offers_the_previous(notebook, backups_dir):
    older, latest = _two_backups(notebook)
    stored = backups_dir / latest.storage_name
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(workspace.StartError) as failed:
        workspace.prepare(notebook)
    message = failed.value.user_message
    assert f"backup {latest.pk}" in message and "corrupt" in message
    assert f"backup {older.pk}" in message and f"backups/{older.pk}/fork/" in message
    # Nothing half-restored is left where the next start would take it.
    assert not workspace.local_path(notebook).exists()
    assert not list(workspace.local_path(notebook).parent.glob(".*restoring"))


def test_a_missing_latest_backup_is_a_clear_error_that_offers_the_previous(notebook, backups_dir):
    older, latest = _two_backups(notebook)
    (backups_dir / latest.storage_name).unlink()
    with pytest.raises(workspace.StartError) as failed:
        workspace.prepare(notebook)
    assert "missing" in failed.value.user_message
    assert f"backup {older.pk}" in failed.value.user_message
    assert not workspace.local_path(notebook).exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (root)")
def test_a_full_disk_during_a_restore_names_the_cause_and_leaves_nothing(
    notebook, backups_dir, settings, tmp_path
):
    import subprocess

    _two_backups(notebook)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        settings.NBCLOUD_WORKSPACES_DIR = small / "workspaces"
        with pytest.raises(workspace.StartError) as failed:
            workspace.prepare(notebook)
        assert "ran out of disk space" in failed.value.user_message
        assert not workspace.local_path(notebook).exists()
        assert not [p for p in (small / "workspaces").iterdir()]  # no staging left
        # The host keeps working: the space is free again.
        (small / "workspaces" / "probe").write_bytes(b"x" * 500_000)
    finally:
        subprocess.run(["umount", str(small)], check=True)
