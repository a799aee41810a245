"""The invocation's settings and API client, made once per command from the root options."""

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Annotated, Any, Optional

import typer

from . import config
from .client import ApiClient


@dataclass
class Invocation:
    profile: Optional[str] = None
    project: Optional[str] = None
    _client: Optional[ApiClient] = field(default=None, repr=False)

    def settings(self) -> config.Settings:
        return config.resolve(self.profile, self.project)

    def client(self) -> ApiClient:
        if self._client is None:
            s = self.settings()
            missing = [k for k in ("url", "token") if not getattr(s, k)]
            if missing:
                raise config.ConfigError(
                    f"no platform {' or '.join(missing)} for profile {s.profile!r}: run "
                    "`nbc login --url URL --token TOKEN`, or set NBC_URL and NBC_TOKEN"
                )
            self._client = ApiClient(s.url, s.token, s.project)
        return self._client


# Set by the root callback at the start of each invocation.
_current: ContextVar[Optional[Invocation]] = ContextVar("nbc_invocation", default=None)


def begin(profile: Optional[str], project: Optional[str]) -> Invocation:
    inv = Invocation(profile=profile, project=project)
    _current.set(inv)
    return inv


def invocation() -> Invocation:
    inv = _current.get()
    if inv is None:
        inv = begin(None, None)
    return inv


def api() -> ApiClient:
    return invocation().client()


ForceOption = Annotated[bool, typer.Option("--force", "-f", help="Do not ask for confirmation.")]


def delete_confirmed(path: str, force: bool, question: Callable[[dict], str]) -> Any:
    """DELETE `path` once the user says yes to `question(the object)`, or at once with --force."""
    client = api()
    if not force:
        typer.confirm(question(client.get(path)), abort=True, err=True)
    return client.delete(path)
