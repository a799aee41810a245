"""Profiles: where `nbc` finds the platform's URL, a token and the project.

Profiles live in one TOML file, `~/.config/nbcloud/config.toml` (or
`$NBC_CONFIG`), readable by its owner only since it holds API tokens:

    current = "default"

    [profiles.default]
    url = "https://nbcloud.example.com"
    token = "nbc_..."
    project = "demo"

What a command uses, first found wins: a command-line flag (`--profile`,
`--project`), then `NBC_PROFILE`, `NBC_URL`, `NBC_TOKEN`, `NBC_PROJECT`, then
the profile.
"""

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .compat import tomllib

DEFAULT_PROFILE = "default"
PROFILE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
KEYS = ("url", "token", "project")
ENV = {"url": "NBC_URL", "token": "NBC_TOKEN", "project": "NBC_PROJECT"}


class ConfigError(Exception):
    """The configuration is missing or unusable: a usage error (exit 2)."""


def config_path() -> Path:
    explicit = os.environ.get("NBC_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "nbcloud" / "config.toml"


@dataclass
class ConfigFile:
    path: Path
    current: str = DEFAULT_PROFILE
    profiles: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Optional[Path] = None) -> "ConfigFile":
        path = path or config_path()
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            return cls(path)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        profiles = {
            str(name): {k: str(v) for k, v in values.items() if k in KEYS}
            for name, values in (data.get("profiles") or {}).items()
            if isinstance(values, dict)
        }
        return cls(path, str(data.get("current") or DEFAULT_PROFILE), profiles)

    def save(self) -> None:
        """Write the file atomically, mode 0600, in a folder only its owner can enter."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lines = [
            "# nbcloud command line profiles (`nbc login`). Keep this file private:",
            "# it holds API tokens.",
            f"current = {_quote(self.current)}",
        ]
        for name in sorted(self.profiles):
            lines += ["", f"[profiles.{name}]"]
            lines += [f"{k} = {_quote(v)}" for k, v in self.profiles[name].items() if v]
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".config.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("\n".join(lines) + "\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _quote(value: str) -> str:
    """A TOML basic string."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def check_profile_name(name: str) -> str:
    if not PROFILE_NAME.match(name):
        raise ConfigError(
            f"profile name {name!r} is invalid: use letters, digits, '-' and '_' (at most 64)"
        )
    return name


@dataclass
class Settings:
    """What this invocation uses, and where each value came from."""

    profile: str
    url: Optional[str]
    token: Optional[str]
    project: Optional[str]
    path: Path
    sources: dict[str, str]
    profiles: list[str]


def resolve(profile: Optional[str] = None, project: Optional[str] = None) -> Settings:
    """The settings for this invocation: flags over environment over the profile."""
    file = ConfigFile.load()
    sources: dict[str, str] = {}
    if profile:
        name, sources["profile"] = profile, "--profile"
    elif os.environ.get("NBC_PROFILE"):
        name, sources["profile"] = os.environ["NBC_PROFILE"], "NBC_PROFILE"
    elif file.profiles:
        name, sources["profile"] = file.current, "config file"
    else:
        name, sources["profile"] = DEFAULT_PROFILE, "default"
    stored = file.profiles.get(name, {})
    explicit = sources["profile"] not in ("config file", "default")
    if explicit and name not in file.profiles and not all(os.environ.get(ENV[k]) for k in KEYS[:2]):
        known = ", ".join(sorted(file.profiles)) or "none"
        raise ConfigError(
            f"no profile named {name!r} in {file.path} (profiles: {known}); "
            f"create it with `nbc login --profile {name} --url URL --token TOKEN`"
        )
    values: dict[str, Optional[str]] = {}
    for key in KEYS:
        if key == "project" and project:
            values[key], sources[key] = project, "--project"
        elif os.environ.get(ENV[key]):
            values[key], sources[key] = os.environ[ENV[key]], ENV[key]
        elif stored.get(key):
            values[key], sources[key] = stored[key], f"profile {name}"
        else:
            values[key] = None
    return Settings(
        profile=name,
        url=values["url"],
        token=values["token"],
        project=values["project"],
        path=file.path,
        sources=sources,
        profiles=sorted(file.profiles),
    )


def mask(token: Optional[str]) -> str:
    """A token shown by its first 8 characters (the API's `key_prefix`), never whole."""
    if not token:
        return ""
    return (token[:8] if len(token) > 16 else "") + "…" + "*" * 8
