"""What the attacks on root's file work share: a root-owned secret beside the
destination (`vault`), hostile tar archives built by hand, and both extraction
paths (`path_kind`).

Only the standard library and pytest: a plugin of its own (tests/conftest.py
registers it), so tests/security/test_backup_archives.py also runs on Debian's
own python3 without Django: `pytest --noconftest -p support.security ...`.
"""

import io
import tarfile

import pytest

# What a root-owned secret of the host holds.
ROOT_SECRET = b"root's secret: never to leave its directory\n"


def tar_member(name, kind=tarfile.REGTYPE, data=None, linkname="", mode=0o644):
    """A (TarInfo, bytes or None) member for `tar_archive`."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    return info, data


def tar_archive(*members) -> bytes:
    """A tar archive of (TarInfo, bytes or None) members, built by hand (as an attacker would)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


@pytest.fixture(params=["data_filter", "fallback"])
def path_kind(request, monkeypatch):
    """Each extraction path: tarfile's `data` filter, and our fallback (the filter removed)."""
    if request.param == "fallback":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python's tarfile has no data filter (only the fallback applies)")
    return request.param


@pytest.fixture
def vault(tmp_path):
    """A 0700 directory holding a 0600 secret (ROOT_SECRET), beside the destination."""
    vault = tmp_path / "vault"
    vault.mkdir(mode=0o700)
    secret = vault / "secret"
    secret.write_bytes(ROOT_SECRET)
    secret.chmod(0o600)
    return vault
