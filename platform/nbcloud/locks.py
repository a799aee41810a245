"""One holder at a time, across processes and machines: for periodic rounds that
several control workers would otherwise all run.

On PostgreSQL a session advisory lock (released with the connection if the
process dies); on SQLite, whose database is on this machine, an flock on a
file in the data directory. A round whose lock is taken is skipped, not
queued: another worker is doing it now, and beat sends the next one.
"""

import fcntl
import logging
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import connection

log = logging.getLogger(__name__)
_NAMESPACE = 0x6E62  # "nb": keeps these keys apart from the billing lock's


@contextmanager
def one_at_a_time(name: str) -> Iterator[bool]:
    """Yields True to the one holder of lock `name`, False to anyone else meanwhile."""
    if connection.vendor == "postgresql":
        with _advisory(zlib.crc32(name.encode()) & 0x7FFFFFFF) as held:
            yield held
    else:
        with _flock(Path(settings.DATA_DIR) / f"{name}.lock") as held:
            yield held


@contextmanager
def _advisory(key: int) -> Iterator[bool]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_NAMESPACE, key])
        held = cursor.fetchone()[0]
    try:
        yield held
    finally:
        if held and connection.connection is not None:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_NAMESPACE, key])


@contextmanager
def _flock(path: Path) -> Iterator[bool]:
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
