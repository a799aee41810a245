"""What the command line's tests share: running `nbc` in-process, a clean environment."""

import pytest
from typer.testing import CliRunner

from nbcloud.cli.main import app


def _invoke(args: list[str], env: dict, input: str | None = None):
    """`nbc ARGS` with this environment; an unexpected exception fails the test as itself."""
    result = CliRunner().invoke(app, args, env=env, input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture
def nbc():
    return _invoke


@pytest.fixture
def env(tmp_path) -> dict:
    """No profile, nothing from the machine's environment: only what a test sets."""
    return {
        "NBC_CONFIG": str(tmp_path / "nbcloud" / "config.toml"),
        "NBC_URL": None,
        "NBC_TOKEN": None,
        "NBC_PROJECT": None,
        "NBC_PROFILE": None,
        "COLUMNS": "200",
    }


@pytest.fixture
def as_alice(env, platform_server, alice) -> dict:
    return {**env, "NBC_URL": platform_server, "NBC_TOKEN": alice[1], "NBC_PROJECT": "alpha"}


@pytest.fixture
def as_bob(env, platform_server, bob) -> dict:
    """Bob: a read-only member of alpha."""
    return {**env, "NBC_URL": platform_server, "NBC_TOKEN": bob[1], "NBC_PROJECT": "alpha"}


@pytest.fixture
def leave_no_editor():
    """Whatever a test did, no editor is left running."""
    yield
    from nbcloud.notebooks.models import Notebook
    from workers.lifecycle import runtime_for

    for notebook in Notebook.objects.all():
        if notebook.runtime_state:
            runtime_for(notebook).stop(5)
