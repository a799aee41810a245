"""`nbc notebook ...`: run, list, inspect, start, stop, delete and follow notebooks."""

import secrets
import time
import webbrowser
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from . import output, params, remote
from .client import UUID, ApiError
from .context import ForceOption, api, delete_confirmed
from .output import Format, OutputOption
from .waiting import State, describe, wait_for_state

app = typer.Typer(
    help="Run and manage notebooks. A notebook is named by its id, a unique id prefix or its name.",
    no_args_is_help=True,
)
backup_app = typer.Typer(help="A notebook's workspace backups.", no_args_is_help=True)
app.add_typer(backup_app, name="backup")


def complete_notebook(incomplete: str) -> list[tuple[str, str]]:
    """Shell completion of notebook ids (quietly nothing when the platform is away)."""
    try:
        from . import config
        from .client import ApiClient

        s = config.resolve()
        if not (s.url and s.token and s.project):
            return []
        client = ApiClient(s.url, s.token, s.project, connect_timeout=1, read_timeout=3)
        notebooks = client.get(client.project_path("notebooks/"), size=200)["results"]
    except Exception:
        return []
    return [
        (nb["id"], f"{nb['spec']['name']} ({nb['status']['state']})")
        for nb in notebooks
        if nb["id"].startswith(incomplete) or nb["spec"]["name"].startswith(incomplete)
    ]


NotebookArg = Annotated[
    str,
    typer.Argument(
        help="Notebook id, unique id prefix or name.",
        autocompletion=complete_notebook,
        show_default=False,
    ),
]
WaitOption = Annotated[
    bool, typer.Option("--wait", "-w", help="Follow the notebook until it gets there.")
]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", help="Seconds --wait waits at most.", min=1)
]


def _resolve(ref: str) -> str:
    return api().resolve_notebook(ref)


# Rendering.


def _env(nb: dict) -> str:
    env = nb["spec"]["env"]
    return f"{env['framework_id']} {env['framework_version']} / {env['editor_id']}"


def _resources(nb: dict, flavor: bool = True) -> str:
    res = nb["spec"]["resources"]
    units = f"{res['gpu']} GPU" if res.get("gpu") else f"{res.get('cpu') or 0} CPU"
    return f"{units} ({res['flavor']})" if flavor else units


def render_list(notebooks: list[dict]):
    if not notebooks:
        output.note("No notebooks.")
        return None
    return output.table(
        ["ID", "NAME", "STATE", "ENV", "RESOURCES", "LABELS", "CREATED"],
        [
            [
                nb["id"],
                nb["spec"]["name"],
                output.state(nb["status"]["state"]),
                _env(nb),
                _resources(nb, flavor=False),
                output.labels(nb["spec"]["labels"]),
                output.ago(nb["created_at"]),
            ]
            for nb in notebooks
        ],
        no_wrap=3,
    )


def render_one(nb: dict):
    spec, status = nb["spec"], nb["status"]
    state = output.state(status["state"])
    if describe(nb):
        state = state + Text(f"  {describe(nb)}")
    started = status.get("last_started_at")
    return output.fields(
        [
            ("ID", nb["id"]),
            ("Name", spec["name"]),
            ("Project", nb.get("project")),
            ("State", state),
            ("URL", status.get("url")),
            ("Environment", _env(nb)),
            ("Resources", _resources(nb)),
            ("Region", spec.get("region")),
            ("Host", status.get("host")),
            ("Labels", output.labels(spec.get("labels"))),
            ("Env vars", ", ".join(e["name"] for e in spec.get("env_vars") or [])),
            ("Volumes", ", ".join(v.get("spec", str(v)) for v in spec.get("volumes") or [])),
            ("Access", "open (unsecure_http)" if spec.get("unsecure_http") else "restricted"),
            ("SSH keys", len(spec.get("ssh_public_keys") or [])),
            ("Auto-restart", spec.get("timeout_auto_restart")),
            ("Created", f"{output.when(nb.get('created_at'))} by {nb.get('created_by') or '?'}"),
            ("Last started", output.when(started)),
            ("Last stopped", output.when(status.get("last_stopped_at"))),
            ("Running for", output.duration(status["duration"]) if status.get("duration") else ""),
            ("Workspace", output.size(status.get("workspace_size"))),
            ("Cost this month", output.costs(status.get("cost_to_date"))),
        ]
    )


def _finish(nb_id: str, nb: Optional[dict], fmt: Format, wait: bool, target: str, timeout: float):
    """Print the notebook the API answered, or (with --wait) the one that reached `target`."""
    if wait:
        nb = wait_for_state(api(), nb_id, target, timeout=timeout)
    if nb is None:  # deleted
        if fmt == Format.table:
            output.note(f"Notebook {nb_id} deleted.", style="")
        else:
            output.emit({"id": nb_id, "status": {"state": "DELETED"}}, fmt, lambda d: None)
        return
    if fmt == Format.table and target == "DELETED":
        state = nb["status"]["state"]
        output.note(f"Notebook {nb['spec']['name']} ({nb_id}) is {state}.", style="")
        return
    output.emit(nb, fmt, render_one)


# Commands.


@app.command("run")
def run(
    framework: Annotated[
        str, typer.Argument(help="Framework id: `nbc capabilities framework`.", show_default=False)
    ],
    editor: Annotated[
        str, typer.Argument(help="Editor id: jupyterlab or vscode.", show_default=False)
    ],
    gpu: Annotated[
        Optional[int], typer.Option("--gpu", min=1, help="Number of GPUs (the default: 1 GPU).")
    ] = None,
    cpu: Annotated[
        Optional[int], typer.Option("--cpu", min=1, help="Number of CPUs, instead of GPUs.")
    ] = None,
    flavor: Annotated[
        Optional[str], typer.Option(help="Flavor id: `nbc capabilities flavor`.")
    ] = None,
    framework_version: Annotated[
        Optional[str], typer.Option(help="Framework version (default: the framework's default).")
    ] = None,
    volume: Annotated[
        Optional[list[str]],
        typer.Option(
            "--volume",
            "-v",
            help="container@alias[/prefix]:/mount:RO|RW|RWD[:cache] or "
            "https://host/repo.git[@branch]:/mount:RO|RW. Repeatable.",
        ),
    ] = None,
    label: Annotated[
        Optional[list[str]],
        typer.Option(
            "--label", "-l", help="Label KEY=VALUE. Repeatable.", callback=params.label_pairs
        ),
    ] = None,
    envvar: Annotated[
        Optional[list[str]],
        typer.Option(
            "--envvar",
            "-e",
            help="Environment variable NAME=VALUE. Repeatable.",
            callback=params.envvar_pairs,
        ),
    ] = None,
    name: Annotated[
        Optional[str], typer.Option(help="Notebook name (default: FRAMEWORK-EDITOR-xxxx).")
    ] = None,
    region: Annotated[Optional[str], typer.Option(help="Region id, e.g. GRA.")] = None,
    unsecure_http: Annotated[
        bool, typer.Option("--unsecure-http", help="Open access: anyone with the URL may enter.")
    ] = False,
    ssh_public_keys: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--ssh-public-keys",
            "-s",
            help="A file of SSH public keys (one per line). Repeatable.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    restart_on_timeout: Annotated[
        bool,
        typer.Option("--restart-on-timeout", help="Restart the notebook when it times out."),
    ] = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = 1800,
    fmt: OutputOption = Format.table,
):
    """Create a notebook and start it.

    Example: nbc notebook run conda jupyterlab --cpu 2 -l team=vision --wait
    """
    if gpu is not None and cpu is not None:
        raise typer.BadParameter(
            "give --gpu or --cpu, not both (a notebook runs on GPUs or CPUs)",
            param_hint="--gpu / --cpu",
        )
    resources: dict = {}
    if gpu is not None:
        resources["gpu"] = gpu
    if cpu is not None:
        resources["cpu"] = cpu
    if flavor:
        resources["flavor"] = flavor
    env = {"framework_id": framework, "editor_id": editor}
    if framework_version:
        env["framework_version"] = framework_version
    body = {
        "name": name or f"{framework}-{editor}-{secrets.token_hex(2)}",
        "env": env,
        "resources": resources,
        "labels": params.pairs(label, "KEY"),
        "env_vars": [{"name": k, "value": v} for k, v in params.pairs(envvar, "NAME").items()],
        "volumes": list(volume or []),
        "unsecure_http": unsecure_http,
        "ssh_public_keys": params.ssh_keys(ssh_public_keys),
        "timeout_auto_restart": restart_on_timeout,
    }
    if region:
        body["region"] = region
    client = api()
    nb = client.post(client.project_path("notebooks/"), body)
    if fmt == Format.table:
        output.note(f"Notebook {nb['spec']['name']} ({nb['id']}) created.", style="")
    _finish(nb["id"], nb, fmt, wait, "RUNNING", timeout)


@app.command("list")
def list_(
    label_selector: Annotated[
        Optional[str],
        typer.Option(help="Only notebooks whose labels match, e.g. team=vision,env!=prod."),
    ] = None,
    state: Annotated[
        Optional[State],
        typer.Option(help="Only notebooks in this state.", case_sensitive=False),
    ] = None,
    fmt: OutputOption = Format.table,
):
    """List the project's notebooks."""
    client = api()
    notebooks = client.get_all(
        client.project_path("notebooks/"),
        label_selector=label_selector,
        state=state.value if state else None,
    )
    output.emit(notebooks, fmt, render_list)


@app.command("get")
def get(notebook: NotebookArg, fmt: OutputOption = Format.table):
    """Show one notebook: spec, state, URL, cost."""
    client = api()
    output.emit(client.get(client.notebook_path(_resolve(notebook))), fmt, render_one)


@app.command("start")
def start(
    notebook: NotebookArg,
    wait: WaitOption = False,
    timeout: TimeoutOption = 1800,
    fmt: OutputOption = Format.table,
):
    """Start a stopped (or failed) notebook; its workspace comes back from its last backup."""
    _act(notebook, "start/", "RUNNING", wait, timeout, fmt)


@app.command("stop")
def stop(
    notebook: NotebookArg,
    wait: WaitOption = False,
    timeout: TimeoutOption = 1800,
    fmt: OutputOption = Format.table,
):
    """Stop a notebook; its workspace is saved as a backup first."""
    _act(notebook, "stop/", "STOPPED", wait, timeout, fmt)


def _act(notebook: str, action: str, target: str, wait: bool, timeout: int, fmt) -> None:
    client = api()
    nb_id = _resolve(notebook)
    _finish(nb_id, client.post(client.notebook_path(nb_id, action)), fmt, wait, target, timeout)


@app.command("delete")
def delete(
    notebook: NotebookArg,
    force: ForceOption = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = 1800,
    fmt: OutputOption = Format.table,
):
    """Delete a notebook (stopping it first if it runs)."""
    nb_id = _resolve(notebook)
    nb = delete_confirmed(
        api().notebook_path(nb_id),
        force,
        lambda nb: f"Delete notebook {nb['spec']['name']} ({nb_id}, {nb['status']['state']})?",
    )
    _finish(nb_id, nb, fmt, wait, "DELETED", timeout)


@app.command("wait")
def wait_(
    notebook: NotebookArg,
    state: Annotated[
        State,
        typer.Option(help="The state to wait for.", case_sensitive=False),
    ] = State.RUNNING,
    timeout: TimeoutOption = 1800,
    fmt: OutputOption = Format.table,
):
    """Wait until a notebook reaches a state; exit 1 if it FAILS or settles elsewhere."""
    nb_id = _resolve(notebook)
    _finish(nb_id, None, fmt, True, state.value, timeout)


@app.command("logs")
def logs(
    notebook: NotebookArg,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines (Ctrl-C to stop).")
    ] = False,
    tail: Annotated[int, typer.Option(help="Lines from the end.", min=1, max=5000)] = 200,
    interval: Annotated[float, typer.Option(help="Seconds between polls with -f.", min=0.2)] = 2.0,
):
    """The editor's log."""
    client = api()
    path = client.notebook_path(_resolve(notebook), "logs/")
    seen: list[str] = []
    while True:
        lines = (client.get(path, tail=tail).get("logs") or "").splitlines()
        for line in lines[_overlap(seen, lines) :]:
            typer.echo(line)
        seen = lines
        if not follow:
            return
        time.sleep(interval)


def _overlap(before: list[str], now: list[str]) -> int:
    """How many of `now`'s first lines are the end of `before` (what was printed already)."""
    for k in range(min(len(before), len(now)), 0, -1):
        if before[-k:] == now[:k]:
            return k
    return 0


@app.command("events")
def events(notebook: NotebookArg, fmt: OutputOption = Format.table):
    """Every state change of a notebook: when, who, from, to, why."""
    client = api()
    items = client.get_all(client.notebook_path(_resolve(notebook), "events/"))
    output.emit(
        items,
        fmt,
        lambda rows: output.table(
            ["AT", "ACTOR", "FROM", "TO", "CODE", "MESSAGE"],
            [
                [
                    output.when(e["at"]),
                    e["actor"],
                    output.state(e["from_state"]),
                    output.state(e["to_state"]),
                    e["code"],
                    e["message"],
                ]
                for e in rows
            ],
        ),
    )


@app.command("open")
def open_(
    notebook: NotebookArg,
    browser: Annotated[bool, typer.Option("--browser", help="Open it in a web browser.")] = False,
):
    """Print a notebook's URL (its address on the platform's gateway)."""
    client = api()
    nb = client.get(client.notebook_path(_resolve(notebook)))
    url = nb["status"].get("url")
    if not url:
        raise ApiError(
            409,
            "invalid_state",
            f"notebook {nb['spec']['name']} is {nb['status']['state']} and has no URL; "
            f"start it with `nbc notebook start {nb['id']} --wait`",
        )
    typer.echo(url)
    if browser and not webbrowser.open(url):
        output.note("No web browser could be started here; open the URL above.")


app.command("ssh")(remote.ssh)
app.command("exec")(remote.exec_)


@app.command("label")
def label(
    notebook: NotebookArg,
    labels: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="KEY=VALUE labels to set (merged with the others).", show_default=False
        ),
    ] = None,
    remove: Annotated[
        Optional[list[str]],
        typer.Option("--remove", "-r", help="A label key to remove. Repeatable."),
    ] = None,
    fmt: OutputOption = Format.table,
):
    """Set (or remove) labels of a notebook; the other labels stay."""
    changes = params.pairs(labels, "KEY")
    if not changes and not remove:
        raise typer.BadParameter("give KEY=VALUE labels to set, or --remove KEY")
    client = api()
    path = client.notebook_path(_resolve(notebook))
    current = dict(client.get(path)["spec"]["labels"] or {})
    current.update(changes)
    for key in remove or []:
        current.pop(key, None)
    nb = client.patch(path, {"labels": current})
    output.emit(
        nb["spec"]["labels"],
        fmt,
        lambda values: (
            output.fields(values.items())
            if values
            else Text(f"Notebook {nb['spec']['name']} has no labels.", style="dim")
        ),
    )


@backup_app.command("list")
def backup_list(notebook: NotebookArg, fmt: OutputOption = Format.table):
    """A notebook's workspace backups, newest first."""
    client = api()
    items = client.get_all(client.notebook_path(_resolve(notebook), "backups/"))
    output.emit(
        items,
        fmt,
        lambda rows: (
            output.table(
                ["ID", "CREATED", "SIZE", "WORKSPACE", "SHA256"],
                [
                    [
                        b["id"],
                        output.when(b["created_at"]),
                        output.size(b["size"]),
                        output.size(b["workspace_size"]),
                        (b.get("sha256") or "")[:16],
                    ]
                    for b in rows
                ],
            )
            if rows
            else Text("No backups yet: one is made each time the notebook stops.", style="dim")
        ),
    )


BackupArg = Annotated[
    str,
    typer.Argument(
        help="Backup id or unique id prefix (`nbc notebook backup list`).", show_default=False
    ),
]


def _resolve_backup(nb_id: str, ref: str) -> str:
    client = api()
    ref = ref.strip().lower()
    if UUID.match(ref):
        return ref
    ids = [b["id"] for b in client.get_all(client.notebook_path(nb_id, "backups/"))]
    matches = [i for i in ids if i.startswith(ref)] if ref else []
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ApiError(404, "not_found", f"notebook {nb_id} has no backup {ref!r}")
    raise ApiError(400, "ambiguous", f"{ref!r} matches several backups: {', '.join(matches[:5])}")


@backup_app.command("fork")
def backup_fork(
    notebook: NotebookArg,
    backup: BackupArg,
    name: Annotated[
        Optional[str], typer.Option(help="The new notebook's name (default: NAME-fork).")
    ] = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = 1800,
    fmt: OutputOption = Format.table,
):
    """A new notebook with this one's spec, starting from one of its backups."""
    client = api()
    nb_id = _resolve(notebook)
    backup_id = _resolve_backup(nb_id, backup)
    body = {"name": name} if name else {}
    nb = client.post(client.notebook_path(nb_id, f"backups/{backup_id}/fork/"), body)
    if fmt == Format.table:
        output.note(
            f"Notebook {nb['spec']['name']} ({nb['id']}) forked from backup {backup_id}.",
            style="",
        )
    _finish(nb["id"], nb, fmt, wait, "RUNNING", timeout)


@app.command("sync")
def sync(notebook: NotebookArg, fmt: OutputOption = Format.table):
    """Push a running notebook's read-write volumes to their datastores now."""
    client = api()
    nb_id = _resolve(notebook)
    nb = client.post(client.notebook_path(nb_id, "datasync/"))
    if fmt == Format.table:
        output.note(f"Data sync of notebook {nb['spec']['name']} ({nb_id}) requested.", style="")
    output.emit(nb, fmt, render_one)
