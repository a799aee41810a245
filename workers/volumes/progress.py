"""Sync progress, shown in the notebook's status.data_sync."""

import threading
import time

from s3transfer.subscribers import BaseSubscriber

from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.volumes import Volume

PROGRESS_EVERY = 0.5  # seconds between progress writes to the notebook row


class SyncStatus:
    """The notebook's `data_sync` list, written to its row at most every PROGRESS_EVERY s."""

    def __init__(self, notebook: Notebook, direction: str, volumes: list[Volume]):
        self.notebook = notebook
        self.lock = threading.Lock()
        self.entries = [
            {
                "volume": v.spec,
                "mount_path": v.mount_path,
                "direction": direction,
                "state": "QUEUED",
                "files_done": 0,
                "files_total": 0,
                "bytes_done": 0,
                "bytes_total": 0,
                "message": "",
            }
            for v in volumes
        ]
        self.written = 0.0
        self.save(force=True)

    def update(self, index: int, *, force: bool = False, add_bytes: int = 0, **fields) -> None:
        with self.lock:
            entry = self.entries[index]
            entry.update(fields)
            entry["bytes_done"] += add_bytes
        self.save(force=force)

    def save(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.written < PROGRESS_EVERY:
            return
        self.written = now
        with self.lock:
            snapshot = [dict(e) for e in self.entries]
        Notebook.objects.filter(pk=self.notebook.pk).update(data_sync=snapshot)

    def fail(self, message: str, position: int | None = None) -> None:
        """Entry `position` FAILED with `message`; without one, every entry not done yet."""
        for i, entry in enumerate(self.entries):
            if (position is None and entry["state"] in ("QUEUED", "RUNNING")) or i == position:
                self.update(i, force=True, state="FAILED", message=message)


class TransferProgress(BaseSubscriber):
    """Counts an S3 transfer's bytes into one entry of a SyncStatus."""

    def __init__(self, status: SyncStatus, index: int):
        self.status, self.index = status, index

    def on_progress(self, future, bytes_transferred, **kwargs):
        self.status.update(self.index, add_bytes=bytes_transferred)
