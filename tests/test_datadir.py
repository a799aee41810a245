"""The data directory and the generated secret key are made by an explicit step
(`manage.py setup`, runplatform, the web's entry point, a worker's or beat's
start), never by importing the settings."""

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

from celery import signals

ROOT = Path(__file__).resolve().parent.parent


def _env(data_dir: Path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "SECRET_KEY_FILE")}
    return {
        **env,
        "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}",
        "DJANGO_SETTINGS_MODULE": "nbcloud.settings",
        "NBCLOUD_DATA_DIR": str(data_dir),
        **extra,
    }


def _python(data_dir: Path, code: str, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=_env(data_dir, **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _manage(data_dir: Path, *argv: str, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *argv],
        cwd=ROOT,
        env=_env(data_dir, **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_importing_the_settings_makes_nothing(tmp_path):
    data = tmp_path / "data"
    done = _python(
        data,
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.DATA_DIR, settings.GENERATED_SECRET_KEY_FILE)",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(data), str(data / "secret_key")]
    assert not data.exists()


def test_setup_makes_the_directory_and_the_key_once(tmp_path):
    data = tmp_path / "data"
    done = _manage(data, "setup")
    assert done.returncode == 0, done.stderr
    assert f"made {data / 'secret_key'}" in done.stdout
    assert _mode(data) == 0o700
    assert (data / "static").is_dir()
    key = (data / "secret_key").read_text()
    assert len(key) > 50 and _mode(data / "secret_key") == 0o600

    data.chmod(0o755)
    (data / "secret_key").chmod(0o644)
    again = _manage(data, "setup")
    assert again.returncode == 0, again.stderr
    assert "made" not in again.stdout
    assert (data / "secret_key").read_text() == key
    assert _mode(data) == 0o700 and _mode(data / "secret_key") == 0o600
    # The settings read the generated key.
    read = _python(
        data,
        "import django; django.setup(); from django.conf import settings as s; print(s.SECRET_KEY)",
    )
    assert read.stdout.strip() == key


def test_with_secret_key_set_no_key_is_written(tmp_path):
    data = tmp_path / "data"
    assert _manage(data, "setup", SECRET_KEY="given").returncode == 0
    assert data.is_dir() and not (data / "secret_key").exists()
    assert _manage(data, "check", SECRET_KEY="given").returncode == 0


def test_a_command_before_setup_says_to_run_it(tmp_path):
    data = tmp_path / "data"
    done = _manage(data, "migrate", "--noinput")
    assert done.returncode != 0
    assert "nbcloud.E001" in done.stderr and "manage.py setup" in done.stderr
    assert str(data) in done.stderr
    assert not data.exists()

    data.mkdir()
    done = _manage(data, "check")
    assert done.returncode != 0
    assert "nbcloud.E002" in done.stderr and "manage.py setup" in done.stderr
    assert not (data / "secret_key").exists()


def test_the_web_entry_point_prepares_before_serving(tmp_path):
    data = tmp_path / "data"
    done = _python(
        data,
        "import nbcloud.asgi; from django.conf import settings; print(settings.SECRET_KEY)",
    )
    assert done.returncode == 0, done.stderr
    assert _mode(data) == 0o700 and (data / "static").is_dir()
    assert done.stdout.strip() == (data / "secret_key").read_text()


def test_beat_prepares_as_it_starts(tmp_path):
    """A real `celery -A nbcloud beat`: Celery sets Django up, then beat starts."""
    data = tmp_path / "data"
    beat = subprocess.Popen(
        [str(Path(sys.executable).parent / "celery"), "-A", "nbcloud", "beat"]
        + ["--schedule", str(tmp_path / "schedule"), "--loglevel", "WARNING"],
        cwd=ROOT,
        env=_env(data),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not (data / "secret_key").exists() and beat.poll() is None:
            assert time.monotonic() < deadline, "beat did not prepare its data directory"
            time.sleep(0.2)
        assert beat.poll() is None, beat.stderr.read().decode()
    finally:
        beat.terminate()
        beat.wait(30)
    assert _mode(data) == 0o700 and (data / "static").is_dir()


def test_a_worker_and_beat_prepare_as_they_start(settings, tmp_path):
    for signal, name in ((signals.celeryd_init, "worker"), (signals.beat_init, "beat")):
        data = tmp_path / name
        settings.DATA_DIR = data
        settings.STATIC_ROOT = data / "static"
        settings.GENERATED_SECRET_KEY_FILE = data / "secret_key"
        signal.send(sender=None)
        assert _mode(data) == 0o700 and (data / "static").is_dir()
        assert (data / "secret_key").read_text() == settings.SECRET_KEY
