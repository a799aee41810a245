"""`nbc notebook ssh` and `nbc notebook exec`: a shell, or one command, in a notebook."""

import base64
import os
import shutil
import sys
from typing import Annotated, Optional
from urllib.parse import urlsplit

import typer

from .client import ApiError
from .context import api


def _ssh_target(notebook: str) -> tuple[dict, str, str, int]:
    client = api()
    nb = client.get(client.notebook_path(client.resolve_notebook(notebook)))
    url = nb["status"].get("ssh_url")
    if not url:
        raise ApiError(
            409,
            "no_ssh",
            "this platform serves no SSH (its NBCLOUD_SSH_PORT is 0); ask its operator",
        )
    parts = urlsplit(url)
    return nb, parts.username, parts.hostname, parts.port or 22


def ssh(
    notebook: Annotated[str, typer.Argument(help="Notebook id or name.")],
    ssh_args: Annotated[
        Optional[list[str]],
        typer.Argument(help="More arguments for ssh (after --), e.g. a command."),
    ] = None,
    config: Annotated[
        bool, typer.Option("--config", help="Print an ~/.ssh/config block (VS Code Remote-SSH).")
    ] = False,
    identity: Annotated[
        Optional[str], typer.Option("--identity", "-i", help="The private key to use.")
    ] = None,
):
    """Open an SSH session in a notebook (the notebook's keys, or your account's)."""
    nb, user, host, port = _ssh_target(notebook)
    if config:
        lines = [
            f"Host nbcloud-{nb['spec']['name']}",
            f"    HostName {host}",
            f"    Port {port}",
            f"    User {user}",
        ]
        if identity:
            lines += [f"    IdentityFile {identity}", "    IdentitiesOnly yes"]
        typer.echo("\n".join(lines))
        return
    program = shutil.which("ssh")
    if program is None:
        raise typer.BadParameter(
            "OpenSSH's ssh is not installed here (apt-get install openssh-client)"
        )
    argv = [program, "-p", str(port)]
    if identity:
        argv += ["-i", identity, "-o", "IdentitiesOnly=yes"]
    sys.stdout.flush()
    os.execv(program, [*argv, f"{user}@{host}", *(ssh_args or [])])


def exec_(
    notebook: Annotated[str, typer.Argument(help="Notebook id or name.")],
    command: Annotated[list[str], typer.Argument(help="The command and its arguments, after --.")],
    timeout: Annotated[int, typer.Option("--timeout", min=1, max=3600)] = 600,
):
    """Run a command in a running notebook; its output streams here, and nbc exits
    with its exit code (255 when it could not run)."""
    client = api()
    path = client.notebook_path(client.resolve_notebook(notebook), "exec/")
    code = 255
    for item in client.post_lines(path, {"command": command, "timeout": timeout}):
        if "data" in item:
            out = sys.stdout if item["stream"] == "stdout" else sys.stderr
            out.buffer.write(base64.b64decode(item["data"]))
            out.flush()
        elif "exit_code" in item:
            if item.get("error"):
                typer.echo(f"nbc: {item['error']}", err=True)
            code = item["exit_code"] if item["exit_code"] is not None else 255
    raise typer.Exit(code)
