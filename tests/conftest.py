"""The suite's root: it registers the shared fixtures (tests/support/fixtures.py, and
support/security.py for the attacks on root's file work).

Helpers are imported from `support.<module>` (pyproject puts tests/ on the
path); no test imports a conftest. docs/testing.md says how the suite is laid out.
"""

import time

import pytest

# Plain assertions in the helpers report what they compared, as in the tests.
pytest.register_assert_rewrite("support")

pytest_plugins = ["support.fixtures", "support.security"]


def pytest_configure(config):
    """The tests' data directory (NBCLOUD_DATA_DIR, var/test) and secret key, made as
    `manage.py setup` makes them, before the test database (SQLite: a file there)."""
    from nbcloud.datadir import prepare

    prepare()
    _flush_survives_deadlocks()


def _flush_survives_deadlocks() -> None:
    """A transactional test ends with a TRUNCATE of every table, while the session's
    host worker may still read them (its check at every heartbeat joins notebooks,
    projects and hosts): PostgreSQL can find the two deadlocked and abort the
    TRUNCATE. The flush rolls back whole, so it is tried again (five times)."""
    from django.core.management.base import CommandError
    from django.core.management.commands import flush
    from django.db import OperationalError

    handle = flush.Command.handle

    def retried(self, **options):
        for attempt in range(5):
            try:
                return handle(self, **options)
            except CommandError as exc:
                deadlock = isinstance(exc.__cause__, OperationalError) and "deadlock" in str(
                    exc.__cause__
                )
                if not deadlock or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    flush.Command.handle = retried
