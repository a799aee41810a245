"""Many rows in one statement, whatever their number.

The rows travel as one JSON parameter and are read back as a table named `v`
(PostgreSQL's `jsonb_to_recordset`, SQLite's `json_each`), so an UPDATE ...
FROM or an INSERT ... SELECT writes them all at once: no statement per row,
no placeholder per value, none of the ORM's per-object work.
"""

import json
from typing import Any

from django.db import connection
from django.db.models import Model


def table(columns: dict[str, str]) -> str:
    """SQL for the rows of `columns` (name: PostgreSQL type) as table `v`; its one
    placeholder takes `rows(...)`."""
    if connection.vendor == "postgresql":
        typed = ", ".join(f"{name} {kind}" for name, kind in columns.items())
        return f"jsonb_to_recordset(%s::jsonb) AS v({typed})"
    picked = ", ".join(f"json_extract(value, '$.{name}') AS {name}" for name in columns)
    return f"(SELECT {picked} FROM json_each(%s)) AS v"


def rows(values: list[dict[str, Any]]) -> str:
    """The parameter for `table`: the rows as JSON."""
    return json.dumps(values, default=str)


def key(model: type[Model], pk: Any) -> str:
    """`pk` as this database stores it (a UUID is 32 hex digits on SQLite)."""
    field = model._meta.pk
    return str(field.get_db_prep_value(field.to_python(pk), connection))


def stamp(value) -> Any:
    """A datetime as this database takes it as a parameter of raw SQL."""
    return connection.ops.adapt_datetimefield_value(value)
