"""`nbc`: the nbcloud command line (typer + rich + httpx; HTTP only, no Django).

Exit codes: 0 done; 1 the API refused (its message is printed as is), or a
notebook waited for ended FAILED; 2 usage error; 3 the platform could not be
reached.
"""

from typing import Annotated, Optional

import typer
from rich.console import Group
from rich.text import Text
from typer.core import TyperGroup

from . import config, data, datastores, notebooks, output, tokens
from .client import ApiClient, ApiError, Unreachable, package_version
from .compat import StrEnum
from .context import api, begin, invocation
from .output import Format, OutputOption
from .waiting import WaitFailed

EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3

HELP = """\
The command line for nbcloud: managed AI notebooks (JupyterLab, VS Code) on GPUs and CPUs.

Start with `nbc login --url URL --token TOKEN --project PROJECT`. The variables
NBC_URL, NBC_TOKEN, NBC_PROJECT and NBC_PROFILE override the stored profile.

Listings print tables; add `-o json` or `-o yaml` for scripts.

Shell completion (bash, zsh, fish): `nbc --install-completion`, or
`nbc completion bash` (zsh, fish) to print the script.

Exit codes: 0 done, 1 refused by the API (or a notebook ended FAILED),
2 usage error, 3 platform unreachable.
"""


class NbcGroup(TyperGroup):
    """The root group: turns the CLI's errors into one line on stderr and an exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            output.error(exc.message)
            raise typer.Exit(EXIT_REFUSED) from None
        except (WaitFailed, data.TransferFailed) as exc:
            output.error(str(exc))
            raise typer.Exit(EXIT_REFUSED) from None
        except Unreachable as exc:
            output.error(f"{exc} (is the platform running, and is the URL right?)")
            raise typer.Exit(EXIT_UNREACHABLE) from None
        except config.ConfigError as exc:
            output.error(str(exc))
            raise typer.Exit(EXIT_USAGE) from None
        except KeyboardInterrupt:
            output.note("Interrupted.")
            raise typer.Exit(130) from None


app = typer.Typer(
    name="nbc",
    help=HELP,
    cls=NbcGroup,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,  # locals would show tokens
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(notebooks.app, name="notebook")
app.add_typer(notebooks.app, name="nb", hidden=True)
app.add_typer(tokens.app, name="token")
app.add_typer(datastores.app, name="datastore")
app.add_typer(data.app, name="data")
config_app = typer.Typer(help="Profiles: where nbc finds the platform.", no_args_is_help=True)
app.add_typer(config_app, name="config")
capabilities_app = typer.Typer(
    help="What can be asked for: frameworks, editors, flavors, regions.", no_args_is_help=True
)
app.add_typer(capabilities_app, name="capabilities")


def _version(value: bool):
    if value:
        typer.echo(f"nbc {package_version()}")
        raise typer.Exit()


@app.callback()
def root(
    profile: Annotated[
        Optional[str], typer.Option(help="Profile to use (or NBC_PROFILE).", show_default=False)
    ] = None,
    project: Annotated[
        Optional[str],
        typer.Option(help="Project to act on (or NBC_PROJECT).", show_default=False),
    ] = None,
    version: Annotated[
        Optional[bool],
        typer.Option("--version", help="Print the version.", callback=_version, is_eager=True),
    ] = None,
):
    begin(profile, project)


# Login and profiles.


@app.command()
def login(
    url: Annotated[
        str, typer.Option(prompt="Platform URL", help="e.g. https://nbcloud.example.com")
    ],
    token: Annotated[
        str, typer.Option(prompt="API token", hide_input=True, help="An app token (nbc_...).")
    ],
    project: Annotated[Optional[str], typer.Option(help="The project commands act on.")] = None,
    profile: Annotated[
        str, typer.Option(help="Profile name, to keep several platforms or projects.")
    ] = config.DEFAULT_PROFILE,
    verify: Annotated[
        bool, typer.Option(help="Check the URL and token with the platform before saving.")
    ] = True,
):
    """Store a profile (URL, token, project) and make it the current one."""
    config.check_profile_name(profile)
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise typer.BadParameter(f"{url!r} is not an http:// or https:// URL", param_hint="--url")
    detail = ""
    if verify:
        client = ApiClient(url, token.strip(), project)
        if project:
            about = client.get(client.project_path())
            detail = f" as {about['role']} of project {about['name']}"
        else:
            client.get("capabilities/regions/")
    file = config.ConfigFile.load()
    file.profiles[profile] = {"url": url, "token": token.strip(), "project": project or ""}
    file.current = profile
    file.save()
    output.note(f"Logged in to {url}{detail}; profile {profile!r} saved in {file.path}.", style="")


@config_app.command("show")
def config_show(fmt: OutputOption = Format.table):
    """What nbc uses now and where each value comes from (the token masked)."""
    s = invocation().settings()
    data = {
        "config_file": str(s.path),
        "profile": s.profile,
        "url": s.url,
        "project": s.project,
        "token": config.mask(s.token),
        "sources": s.sources,
        "profiles": s.profiles,
    }

    def render(d):
        def src(key):
            return f"  ({s.sources[key]})" if key in s.sources else ""

        return output.fields(
            [
                ("Config file", d["config_file"]),
                ("Profile", f"{d['profile']}{src('profile')}"),
                ("URL", f"{d['url'] or '-'}{src('url')}"),
                ("Project", f"{d['project'] or '-'}{src('project')}"),
                ("Token", f"{d['token'] or '-'}{src('token')}"),
                ("Profiles", ", ".join(d["profiles"]) or "none (run nbc login)"),
            ]
        )

    output.emit(data, fmt, render)


@config_app.command("use")
def config_use(name: Annotated[str, typer.Argument(help="A stored profile.", show_default=False)]):
    """Make a stored profile the current one."""
    file = config.ConfigFile.load()
    if name not in file.profiles:
        known = ", ".join(sorted(file.profiles)) or "none"
        raise config.ConfigError(f"no profile named {name!r} (profiles: {known})")
    file.current = name
    file.save()
    output.note(f"Profile {name!r} is now the current one.", style="")


class Shell(StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


@app.command("completion")
def completion(shell: Annotated[Shell, typer.Argument(help="bash, zsh or fish.")]):
    """Print the shell completion script, e.g. `source <(nbc completion bash)`, or
    `nbc completion fish > ~/.config/fish/completions/nbc.fish`."""
    from typer._completion_shared import get_completion_script

    typer.echo(
        get_completion_script(prog_name="nbc", complete_var="_NBC_COMPLETE", shell=shell.value)
    )


# Project, quota, usage.


@app.command("project")
def project_(fmt: OutputOption = Format.table):
    """The project: your role, its GPU quota, this month's cost to date and budget."""
    client = api()

    def render(p):
        budget = p.get("budget")
        if budget:
            style = {"ok": "green", "warning": "yellow", "exceeded": "bold red"}.get(
                budget["state"], ""
            )
            budget_text = Text(
                f"{budget['spent']} of {budget['monthly_amount']} {budget['currency']} "
                f"({budget['used_percent']} %) "
            ) + Text(budget["state"], style=style)
        else:
            budget_text = Text("none", style="dim")
        return output.fields(
            [
                ("Project", p["name"]),
                ("Your role", p["role"]),
                ("GPU quota", p["gpu_quota"]),
                ("Cost this month", output.costs(p.get("cost_to_date"))),
                ("Budget", budget_text),
            ]
        )

    output.emit(client.get(client.project_path()), fmt, render)


@app.command("quota")
def quota(fmt: OutputOption = Format.table):
    """What the project uses now against its limits."""
    client = api()

    def render(q):
        return output.fields(
            [
                ("Project", q["project"]),
                ("GPUs in use", f"{q['gpu']['used']} of {q['gpu']['limit']}"),
                ("GPUs per notebook", f"at most {q['gpu']['max_per_notebook']}"),
                ("CPUs in use", q["cpu"]["used"]),
                ("CPUs per notebook", f"at most {q['cpu']['max_per_notebook']}"),
                ("Active notebooks", q["notebooks"]["active"]),
            ]
        )

    output.emit(client.get(client.project_path("quota/")), fmt, render)


class GroupBy(StrEnum):
    notebook = "notebook"
    day = "day"
    flavor = "flavor"


@app.command("usage")
def usage(
    from_: Annotated[
        Optional[str],
        typer.Option("--from", help="Date or ISO datetime (default: start of the month)."),
    ] = None,
    to: Annotated[
        Optional[str], typer.Option("--to", help="Date or ISO datetime, excluded (default: now).")
    ] = None,
    group_by: Annotated[
        GroupBy,
        typer.Option(help="Rows per notebook, day or flavor.", case_sensitive=False),
    ] = GroupBy.notebook,
    csv: Annotated[bool, typer.Option("--csv", help="Print CSV (for a spreadsheet).")] = False,
    fmt: OutputOption = Format.table,
):
    """Billed minutes, unit-minutes and cost, per notebook, day or flavor."""
    client = api()
    query = {"from": from_, "to": to, "group_by": group_by.value}
    if csv:
        text = client.request(
            "GET",
            client.project_path("usage/"),
            raw=True,
            params={**{k: v for k, v in query.items() if v}, "format": "csv"},
            headers={"Accept": "text/csv"},
        )
        typer.echo(text, nl=not text.endswith("\n"))
        return
    report = client.get(client.project_path("usage/"), **query)

    def render(r):
        rows = r["rows"]
        title = f"Usage from {output.when(r['from'])} to {output.when(r['to'])}, by {r['group_by']}"
        if not rows:
            return Text(f"{title}: nothing billed.", style="dim")
        columns = list(rows[0])
        if r["group_by"] == "notebook":  # the name first
            columns = ["notebook_name", "notebook_id"] + columns[2:]
        table = output.table(
            [c.upper().replace("_", " ") for c in columns],
            [[row.get(c) for c in columns] for row in rows],
        )
        for currency in sorted({row["currency"] for row in rows}):
            mine = [row for row in rows if row["currency"] == currency]
            table.add_row(
                *[
                    Text("total", style="bold") if i == 0 else Text("")
                    for i in range(len(columns) - 4)
                ],
                Text(str(sum(row["minutes"] for row in mine)), style="bold"),
                Text(str(sum(row["units"] for row in mine)), style="bold"),
                Text(str(output.decimal_sum(row["cost"] for row in mine)), style="bold"),
                Text(currency, style="bold"),
            )
        return Group(Text(title, style="bold"), table)

    output.emit(report, fmt, render)


# Capabilities.


def _capabilities(kind: str, fmt: Format, render) -> None:
    output.emit(api().get(f"capabilities/{kind}/"), fmt, render)


@capabilities_app.command("framework")
def capabilities_framework(fmt: OutputOption = Format.table):
    """Frameworks (environments) and their versions; * marks the default version."""
    _capabilities(
        "frameworks",
        fmt,
        lambda items: output.table(
            ["ID", "NAME", "VERSIONS", "EDITORS"],
            [
                [
                    f["id"],
                    f["name"],
                    ", ".join(
                        v + ("*" if v == f.get("default_version") else "") for v in f["versions"]
                    ),
                    ", ".join(f["editors"]),
                ]
                for f in items
            ],
        ),
    )


@capabilities_app.command("editor")
def capabilities_editor(fmt: OutputOption = Format.table):
    """Editors: JupyterLab, VS Code."""
    _capabilities(
        "editors",
        fmt,
        lambda items: output.table(
            ["ID", "NAME", "DOCUMENTATION"], [[e["id"], e["name"], e.get("doc_url")] for e in items]
        ),
    )


@capabilities_app.command("flavor")
def capabilities_flavor(fmt: OutputOption = Format.table):
    """Flavors: what one GPU or one CPU comes with, and its price per minute."""

    def gpu(f):
        if f["type"] != "gpu":
            return ""
        return f"{f.get('gpu_model') or 'GPU'} {f.get('gpu_memory_gib') or '?'} GiB"

    _capabilities(
        "flavors",
        fmt,
        lambda items: output.table(
            ["ID", "TYPE", "GPU", "CPUS", "MEMORY", "STORAGE", "MAX", "PRICE/MIN", "DEFAULT"],
            [
                [
                    f["id"],
                    f["type"],
                    gpu(f),
                    f["cpus"],
                    f"{f['memory_gib']} GiB",
                    f"{f['storage_gib']} GiB",
                    f["max"],
                    f.get("price_per_minute"),
                    f.get("default", False),
                ]
                for f in items
            ],
        ),
    )


@capabilities_app.command("region")
def capabilities_region(fmt: OutputOption = Format.table):
    """Regions: groups of hosts."""
    _capabilities(
        "regions",
        fmt,
        lambda items: output.table(
            ["ID", "NAME", "DEFAULT"],
            [[r["id"], r["name"], r.get("default", False)] for r in items],
        ),
    )


if __name__ == "__main__":
    app()
