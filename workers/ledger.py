"""This host's own record of the editors it started, one small JSON file per run.

The notebook row says where a notebook runs now; this record says what was
started here, so a host that was cut off and comes back can find the editors
of runs it no longer holds (its notebooks started elsewhere meanwhile) and
stop them. A run is one placement: it is named by a digest of the editor
secret, which every placement renews.
"""

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from nbcloud.notebooks.models import Notebook

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    notebook_id: str
    run: str
    runtime_state: dict
    # The notebook's last event when the editor started: later events tell
    # what happened to the run since.
    last_event_id: int
    path: Path


def folder(host: str) -> Path:
    return settings.DATA_DIR / "hosts" / host / "editors"


def run_of(notebook: Notebook) -> str:
    return hashlib.sha256(notebook.editor_secret.encode()).hexdigest()[:16]


def record(host: str, notebook: Notebook, runtime_state: dict) -> None:
    """Remember that this host started the notebook's current run (atomically replaced)."""
    path = folder(host) / f"{notebook.pk}.{run_of(notebook)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    last_event = notebook.events.order_by("-id").values_list("id", flat=True).first() or 0
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps({"runtime_state": runtime_state, "last_event_id": last_event}))
    os.replace(staging, path)


def entries(host: str) -> list[Entry]:
    found = []
    for path in sorted(folder(host).glob("*.json")):
        notebook_id, _, run = path.stem.partition(".")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.error("unreadable editor record %s (%s): removed", path, exc)
            path.unlink(missing_ok=True)
            continue
        found.append(Entry(notebook_id, run, data["runtime_state"], data["last_event_id"], path))
    return found


def forget(entry: Entry) -> None:
    entry.path.unlink(missing_ok=True)
