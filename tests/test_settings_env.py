"""A bad setting in the environment stops start-up and names the variable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def setup_django(**env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": "platform:.",
            "DJANGO_SETTINGS_MODULE": "nbcloud.settings",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_environment_as_given_starts():
    done = setup_django()
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "nonsense://x"),
        ("NBCLOUD_BACKUP_RETENTION", "abc"),
        ("NBCLOUD_BACKUP_RETENTION", "0"),
        ("CELERY_BROKER_URL", "http://x"),
        ("DEBUG", "maybe"),
        ("NBCLOUD_RUNTIME", "teleport"),
        ("NBCLOUD_WEBHOOK_ALLOWED_NETWORKS", "the office"),
        ("EMAIL_PORT", "smtp"),
        ("EMAIL_USE_TLS", "sometimes"),
    ],
)
def test_a_bad_variable_stops_start_up_and_is_named(name, value):
    done = setup_django(**{name: value})
    assert done.returncode != 0
    last_line = done.stderr.strip().splitlines()[-1]
    assert "ImproperlyConfigured" in last_line, done.stderr
    assert name in last_line, done.stderr
