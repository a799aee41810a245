"""Parsing of command-line values: `k=v` pairs, SSH key files, expiry times."""

import re
from pathlib import Path
from typing import Optional

import typer

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def pairs(
    values: Optional[list[str]], what: str, *, name_pattern: Optional[re.Pattern] = None
) -> dict:
    """['a=1', 'b=x=y'] -> {'a': '1', 'b': 'x=y'}; a bad item is a usage error (exit 2)."""
    result: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not {what}=VALUE")
        if name_pattern is not None and not name_pattern.match(key):
            raise typer.BadParameter(
                f"{key!r} is not a variable name: letters, digits and _, not starting with a digit"
            )
        result[key] = value
    return result


def label_pairs(values: Optional[list[str]]) -> Optional[list[str]]:
    pairs(values, "KEY")
    return values


def envvar_pairs(values: Optional[list[str]]) -> Optional[list[str]]:
    pairs(values, "NAME", name_pattern=ENV_NAME)
    return values


def ssh_keys(files: Optional[list[Path]]) -> list[str]:
    """The public key lines of these files (blank lines and comments left out)."""
    keys: list[str] = []
    for path in files or []:
        try:
            text = path.expanduser().read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise typer.BadParameter(f"cannot read {path}: {exc}") from None
        found = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
        if not found:
            raise typer.BadParameter(f"{path} holds no public key")
        keys.extend(found)
    return keys


def expiry(value: Optional[str]) -> Optional[str]:
    """'never' -> None (JSON null); anything else is passed on for the API to check."""
    return None if value is None or value.lower() in ("never", "none", "null") else value
