"""What `nbc` prints: rich tables for people, JSON or YAML for scripts.

Data goes to stdout; progress, warnings and errors go to stderr, so that
`nbc ... -o json | jq` always reads clean JSON. Values from the API are
always wrapped in `Text`, never read as rich markup.
"""

import json
import os
import sys
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Optional

import typer
import yaml
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from .compat import StrEnum


class Format(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


OutputOption = Annotated[
    Format,
    typer.Option(
        "--output",
        "-o",
        case_sensitive=False,
        help="table for people (default), json or yaml for scripts.",
    ),
]


def _width() -> Optional[int]:
    if os.environ.get("COLUMNS"):
        return None  # rich reads it
    return None if sys.stdout.isatty() else 160  # piped: no squeezed columns


def console() -> Console:
    """The stdout console, made per use so that it writes to the current sys.stdout."""
    return Console(highlight=False, width=_width())


def err_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def error(message: str) -> None:
    err_console().print(Text("Error: ", style="bold red") + Text(message))


def note(message: str, style: str = "dim") -> None:
    err_console().print(Text(message, style=style))


def emit(data: Any, fmt: Format, render: Callable[[Any], Optional[RenderableType]]) -> None:
    """Print `data` as JSON or YAML, or as what `render` makes of it."""
    if fmt == Format.json:
        typer.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))
    elif fmt == Format.yaml:
        typer.echo(yaml.safe_dump(_plain(data), sort_keys=False, allow_unicode=True), nl=False)
    else:
        renderable = render(data)
        if renderable is not None:
            console().print(renderable)


def _plain(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


# Building blocks.


def table(columns: Iterable[str], rows: Iterable[Iterable[Any]], no_wrap: int = 1) -> Table:
    """A table whose first `no_wrap` columns (an id, a name) never wrap."""
    t = Table(header_style="bold", box=None, pad_edge=False)
    for i, name in enumerate(columns):
        t.add_column(name, no_wrap=(i < no_wrap), overflow="fold")
    for row in rows:
        t.add_row(*(cell(v) for v in row))
    return t


def fields(pairs: Iterable[tuple[str, Any]]) -> Table:
    """A two-column key/value view of one object."""
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    for key, value in pairs:
        t.add_row(key, cell(value))
    return t


def cell(value: Any) -> Text:
    if isinstance(value, Text):
        return value
    if value is None or value == "":
        return Text("-", style="dim")
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    return Text(str(value))


STATE_STYLES = {
    "RUNNING": "bold green",
    "FAILED": "bold red",
    "STOPPED": "dim",
    "DELETED": "dim",
    "QUEUED": "yellow",
    "STARTING": "yellow",
    "RESTARTING": "yellow",
    "STOPPING": "yellow",
    "DELETING": "yellow",
}


def state(value: Optional[str]) -> Text:
    return Text(value or "-", style=STATE_STYLES.get(value or "", ""))


def labels(values: Optional[dict]) -> str:
    return ",".join(f"{k}={v}" for k, v in (values or {}).items())


def parse_time(value: Optional[str]) -> Optional[datetime]:
    if not value:
        return None
    if value.endswith("Z"):  # what the API writes; fromisoformat() reads it from 3.11 on
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def when(value: Optional[str]) -> str:
    """'2026-11-03 10:04 (5 min ago)' in local time."""
    moment = parse_time(value)
    if moment is None:
        return value or ""
    local = moment.astimezone().strftime("%Y-%m-%d %H:%M")
    return f"{local} ({ago(value)})"


def ago(value: Optional[str]) -> str:
    moment = parse_time(value)
    if moment is None:
        return ""
    seconds = (datetime.now(timezone.utc) - moment).total_seconds()
    suffix = "ago" if seconds >= 0 else "from now"
    return f"{duration(abs(seconds))} {suffix}"


def duration(seconds: Optional[float]) -> str:
    seconds = int(seconds or 0)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def size(value: Optional[int]) -> str:
    if value is None:
        return ""
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return str(value)


def costs(values: Optional[list[dict]]) -> str:
    """[{"amount": "0.0123", "currency": "EUR"}] -> '0.0123 EUR'."""
    if not values:
        return "0"
    return ", ".join(f"{c['amount']} {c['currency']}" for c in values)


def decimal_sum(values: Iterable[str]) -> Decimal:
    total = Decimal(0)
    for value in values:
        try:
            total += Decimal(str(value))
        except InvalidOperation:
            continue
    return total
