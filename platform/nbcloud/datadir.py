"""The platform's data directory, made ready by an explicit step, never by importing settings.

`prepare()` makes NBCLOUD_DATA_DIR (mode 0700: the database, secrets, logs and
workspaces are the platform's alone, whoever runs it) and STATIC_ROOT in it,
and, when SECRET_KEY is not set, generates the secret key into
DATA_DIR/secret_key (0600 from its first byte; never readable by anyone
else). It is safe to repeat and to run in several processes at once.

Who calls it: `manage.py setup` (`make run` and `make test` run it first, the
platform's image at build), `manage.py runplatform`, the web's entry points
(nbcloud.asgi, nbcloud.wsgi), and every Celery worker and beat as it starts
(`prepare_when_celery_starts`, connected by the hosts app). Other management
commands find the directory made: a system check (`check_prepared`) stops
them, naming `manage.py setup`, when it is not.
"""

import os
import secrets
from pathlib import Path

from celery import signals
from django.conf import settings
from django.core.checks import CheckMessage, Error


def prepare() -> list[Path]:
    """Make the data directory, its static folder and the generated secret key; what was new."""
    made = []
    data_dir = Path(settings.DATA_DIR)
    if not data_dir.is_dir():
        made.append(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    static = Path(settings.STATIC_ROOT)
    if not static.is_dir():  # whitenoise warns on every request otherwise
        static.mkdir()
        made.append(static)
    key_file = settings.GENERATED_SECRET_KEY_FILE
    if key_file is not None:
        key_file = Path(key_file)
        if _write_key(key_file):
            made.append(key_file)
        # This process read its settings before the key existed.
        settings.SECRET_KEY = key_file.read_text().strip()
    return made


def _write_key(key_file: Path) -> bool:
    """Generate the key into key_file unless it is there (then only its mode is made 0600)."""
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        key_file.chmod(0o600)
        return False
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(50))
    return True


def prepare_when_celery_starts() -> None:
    """Have this process's Celery worker or beat prepare the data directory as it starts.

    Celery sets Django up (its Django fixup) before it sends these signals, so
    connecting them while the apps load is in time.
    """
    signals.celeryd_init.connect(_prepare_on_start, weak=False, dispatch_uid=__name__)
    signals.beat_init.connect(_prepare_on_start, weak=False, dispatch_uid=__name__)


def _prepare_on_start(**_) -> None:
    prepare()


def check_prepared(app_configs=None, **kwargs) -> list[CheckMessage]:
    """The data directory and the generated secret key are there (a system check)."""
    data_dir = Path(settings.DATA_DIR)
    if not data_dir.is_dir():
        return [
            Error(
                f"the data directory {data_dir} (NBCLOUD_DATA_DIR) does not exist",
                hint="run `manage.py setup` (`make run` does) to make it",
                id="nbcloud.E001",
            )
        ]
    key_file = settings.GENERATED_SECRET_KEY_FILE
    if key_file is not None and not Path(key_file).is_file():
        return [
            Error(
                f"no secret key: SECRET_KEY is not set and {key_file} does not exist",
                hint="run `manage.py setup` to generate it there, or set SECRET_KEY",
                id="nbcloud.E002",
            )
        ]
    return []
