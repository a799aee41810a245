"""`nbc token ...`: the project's app tokens (`read` or `operator`)."""

from typing import Annotated, Optional

import typer
from rich.console import Group
from rich.text import Text

from . import output, params
from .compat import StrEnum
from .context import ForceOption, api, delete_confirmed
from .output import Format, OutputOption

app = typer.Typer(
    help="App tokens: `read` lists and opens, `operator` also changes. Values are shown once.",
    no_args_is_help=True,
)


class TokenRole(StrEnum):
    read = "read"
    operator = "operator"


TokenArg = Annotated[int, typer.Argument(help="Token id (`nbc token list`).", show_default=False)]


def _rows(tokens: list[dict]):
    if not tokens:
        return Text("No tokens.", style="dim")
    return output.table(
        ["ID", "NAME", "ROLE", "LABEL SELECTOR", "PREFIX", "EXPIRES", "LAST USED", "USER"],
        [
            [
                t["id"],
                t["name"],
                t["role"],
                t.get("label_selector"),
                (t.get("key_prefix") or "") + "…",
                Text("expired", style="red")
                if t.get("expired")
                else (output.when(t["expires_at"]) if t.get("expires_at") else "never"),
                output.ago(t.get("last_used_at")) or "never",
                t.get("user"),
            ]
            for t in tokens
        ],
    )


def _with_value(token: dict, fmt: Format, quiet: bool, verb: str) -> None:
    if quiet:
        typer.echo(token["value"])
        return

    def render(t: dict):
        return Group(
            Text.assemble(
                (f"Token {t['name']!r} {verb}", "bold"),
                f" (id {t['id']}, role {t['role']}"
                + (f", labels {t['label_selector']}" if t.get("label_selector") else "")
                + (f", expires {t['expires_at']}" if t.get("expires_at") else "")
                + "). Its value, shown only this once:",
            ),
            Text(t["value"], style="bold green"),
        )

    output.emit(token, fmt, render)


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="A name to recognise it by.", show_default=False)],
    role: Annotated[TokenRole, typer.Option(help="read or operator.", show_default=False)],
    label_selector: Annotated[
        Optional[str],
        typer.Option(help="Limit it to notebooks whose labels match, e.g. team=vision."),
    ] = None,
    expires_at: Annotated[
        Optional[str], typer.Option(help="ISO 8601 date-time, e.g. 2027-01-01T00:00:00Z.")
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print the value only (for scripts).")
    ] = False,
    fmt: OutputOption = Format.table,
):
    """Create a token and print its value (once: it is stored hashed)."""
    body: dict = {"name": name, "role": role.value}
    if label_selector:
        body["label_selector"] = label_selector
    if expires_at:
        body["expires_at"] = params.expiry(expires_at)
    client = api()
    _with_value(client.post(client.project_path("tokens/"), body), fmt, quiet, "created")


@app.command("list")
def list_(fmt: OutputOption = Format.table):
    """The project's tokens (never their values)."""
    client = api()
    output.emit(client.get_all(client.project_path("tokens/")), fmt, _rows)


@app.command("renew")
def renew(
    token: TokenArg,
    expires_at: Annotated[
        Optional[str],
        typer.Option(help="New expiry (ISO 8601), or `never`; left out: unchanged."),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print the value only (for scripts).")
    ] = False,
    fmt: OutputOption = Format.table,
):
    """Give a token a new value; the old one stops working at once."""
    body = {} if expires_at is None else {"expires_at": params.expiry(expires_at)}
    client = api()
    _with_value(
        client.post(client.project_path(f"tokens/{token}/renew/"), body), fmt, quiet, "renewed"
    )


@app.command("delete")
def delete(token: TokenArg, force: ForceOption = False):
    """Delete a token: its value stops working at once."""
    client = api()
    delete_confirmed(
        client.project_path(f"tokens/{token}/"),
        force,
        lambda t: f"Delete token {t['name']!r} (id {token}, {t['role']})?",
    )
    output.note(f"Token {token} deleted.", style="")
