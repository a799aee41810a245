"""Settings from the environment, failing loudly with the variable's name.

Each reader takes the variable's name and a default; a value that cannot be
parsed stops start-up with ImproperlyConfigured naming the variable and the
expected form. A `NAME_FILE` variable, when set, is read instead of `NAME`
(secrets mounted as files).
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured


def envstr(name: str, default: str = "") -> str:
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            return Path(file_path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={file_path!r} cannot be read: {exc}") from exc
    return os.environ.get(name, default)


def envint(name: str, default: int, minimum: int | None = None) -> int:
    raw = envstr(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}")
    return value


def envfloat(name: str, default: float, minimum: float | None = None) -> float:
    raw = envstr(name, str(default))
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}")
    return value


def envnetworks(name: str, default: str) -> tuple:
    """Comma-separated CIDRs (10.0.0.0/8,::1/128) as ip_network objects."""
    import ipaddress

    networks = []
    for item in envstr(name, default).split(","):
        if not item.strip():
            continue
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"{name}: {item.strip()!r} is not a network ({exc}); use CIDRs like 10.0.0.0/8"
            ) from None
    return tuple(networks)


def envbool(name: str, default: bool) -> bool:
    raw = envstr(name, "true" if default else "false").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off", ""):
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean: use true or false")


def envchoice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = envstr(name, default)
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} is not one of: {', '.join(choices)}")
    return value


def envpath(name: str, default: Path) -> Path:
    return Path(envstr(name, str(default))).expanduser().resolve()
