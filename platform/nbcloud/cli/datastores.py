"""`nbc datastore ...`: where the project's volumes and data come from (S3 or git)."""

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from . import output
from .compat import StrEnum
from .context import ForceOption, api, delete_confirmed
from .output import Format, OutputOption

app = typer.Typer(
    help="Datastores: S3-compatible object stores and git hosts, with their credentials "
    "(write-only: the platform never shows a secret again).",
    no_args_is_help=True,
)


class DatastoreType(StrEnum):
    s3 = "s3"
    git = "git"


AliasArg = Annotated[
    str,
    typer.Argument(
        metavar="ALIAS", help="The datastore's alias (`nbc datastore list`).", show_default=False
    ),
]


def _render(items: list[dict]):
    if not items:
        return Text("No datastores: add one with `nbc datastore add s3 ALIAS ...`.", style="dim")
    return output.table(
        ["ALIAS", "TYPE", "ENDPOINT / HOST", "REGION", "ACCESS KEY / USER", "CREATED"],
        [
            [
                d["alias"],
                d["type"],
                d.get("endpoint") or d.get("host") or ("AWS" if d["type"] == "s3" else ""),
                d.get("region"),
                d.get("access_key") or d.get("username"),
                output.ago(d.get("created_at")),
            ]
            for d in items
        ],
    )


@app.command("add")
def add(
    type_: Annotated[
        DatastoreType, typer.Argument(metavar="TYPE", help="s3 or git.", show_default=False)
    ],
    alias: AliasArg,
    endpoint: Annotated[
        Optional[str], typer.Option(help="s3: the endpoint URL (left out: AWS).")
    ] = None,
    region: Annotated[Optional[str], typer.Option(help="s3: the region, e.g. gra.")] = None,
    access_key: Annotated[Optional[str], typer.Option(help="s3: the access key.")] = None,
    secret_key: Annotated[
        Optional[str],
        typer.Option(envvar="NBC_SECRET_KEY", help="s3: the secret key (asked for when left out)."),
    ] = None,
    host: Annotated[
        Optional[str], typer.Option(help="git: the host name, e.g. github.com.")
    ] = None,
    username: Annotated[Optional[str], typer.Option(help="git: the user name.")] = None,
    password: Annotated[
        Optional[str],
        typer.Option(
            envvar="NBC_GIT_PASSWORD",
            help="git: a password or access token (asked for with --username when left out).",
        ),
    ] = None,
    ssh_private_key: Annotated[
        Optional[Path],
        typer.Option(help="git: a file holding an SSH private key.", exists=True, dir_okay=False),
    ] = None,
    fmt: OutputOption = Format.table,
):
    """Add a datastore. Example: nbc datastore add s3 lake --endpoint https://s3.gra.example
    --region gra --access-key AK (the secret key is asked for)."""
    body: dict = {"alias": alias, "type": type_.value}
    if type_ == DatastoreType.s3:
        if not access_key:
            raise typer.BadParameter(
                "an s3 datastore needs --access-key", param_hint="--access-key"
            )
        if secret_key is None:
            secret_key = typer.prompt("Secret key", hide_input=True, err=True)
        body.update(endpoint=endpoint, region=region, access_key=access_key, secret_key=secret_key)
    else:
        if username and password is None and ssh_private_key is None:
            password = typer.prompt("Password or access token", hide_input=True, err=True)
        key = ssh_private_key.read_text() if ssh_private_key else None
        body.update(host=host, username=username, password=password, ssh_private_key=key)
    body = {k: v for k, v in body.items() if v}
    client = api()
    created = client.post(client.project_path("datastores/"), body)
    if fmt == Format.table:
        output.note(f"Datastore {created['alias']} ({created['type']}) added.", style="")
    output.emit(created, fmt, lambda d: _render([d]))


@app.command("list")
def list_(fmt: OutputOption = Format.table):
    """The project's datastores (never their secrets)."""
    client = api()
    output.emit(client.get_all(client.project_path("datastores/")), fmt, _render)


@app.command("delete")
def delete(alias: AliasArg, force: ForceOption = False):
    """Delete a datastore (its data stays where it is)."""
    client = api()
    delete_confirmed(
        client.project_path(f"datastores/{alias}/"),
        force,
        lambda d: f"Delete datastore {alias} ({d['type']})?",
    )
    output.note(f"Datastore {alias} deleted.", style="")
