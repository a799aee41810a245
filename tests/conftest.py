"""The suite's root: it registers the shared fixtures (tests/support/fixtures.py, and
support/security.py for the attacks on root's file work).

Helpers are imported from `support.<module>` (pyproject puts tests/ on the
path); no test imports a conftest. docs/testing.md says how the suite is laid out.
"""

import pytest

# Plain assertions in the helpers report what they compared, as in the tests.
pytest.register_assert_rewrite("support")

pytest_plugins = ["support.fixtures", "support.security"]


def pytest_configure(config):
    """The tests' data directory (NBCLOUD_DATA_DIR, var/test) and secret key, made as
    `manage.py setup` makes them, before the test database (SQLite: a file there)."""
    from nbcloud.datadir import prepare

    prepare()
