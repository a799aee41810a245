"""The process runtime's sandbox: bubblewrap (``bwrap``, Debian package
``bubblewrap``) must be on PATH on every host that runs notebooks as processes.
"""

import logging
import os
import shutil
import subprocess

from django.core.management.base import CommandError

logger = logging.getLogger(__name__)

PACKAGE = "bubblewrap"
APT_TIMEOUT = 600


class SandboxUnavailable(CommandError):
    """bubblewrap is missing and could not be installed."""


def ensure_bubblewrap() -> str:
    """Return the path of ``bwrap``, installing the package first if it is
    missing and this process runs as root (``apt-get install -y bubblewrap``,
    with ``apt-get update`` when the first try fails).

    Raises SandboxUnavailable (a CommandError) otherwise.
    """
    path = shutil.which("bwrap")
    if path:
        return path
    if os.geteuid() != 0:
        raise SandboxUnavailable(
            "bwrap (bubblewrap), the notebook sandbox, is not installed: "
            f"run `sudo apt-get install {PACKAGE}`"
        )
    if not shutil.which("apt-get"):
        raise SandboxUnavailable(
            "bwrap (bubblewrap), the notebook sandbox, is not installed and apt-get is "
            f"not available here: install the `{PACKAGE}` package with this system's "
            "package manager"
        )

    logger.warning("bwrap not found: installing %s with apt-get", PACKAGE)
    if not _apt_get("install", "-y", "--no-install-recommends", PACKAGE):
        _apt_get("update")
        _apt_get("install", "-y", "--no-install-recommends", PACKAGE)
    path = shutil.which("bwrap")
    if not path:
        raise SandboxUnavailable(
            f"bwrap (bubblewrap), the notebook sandbox, is not installed and "
            f"`apt-get install -y {PACKAGE}` did not install it: see the output above"
        )
    return path


def _apt_get(*args: str) -> bool:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    command = ["apt-get", *args]
    logger.info("running %s", " ".join(command))
    try:
        result = subprocess.run(command, env=env, timeout=APT_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("%s failed: %s", " ".join(command), exc)
        return False
    return result.returncode == 0
