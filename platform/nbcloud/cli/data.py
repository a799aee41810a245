"""`nbc data ...`: list, upload and download objects of the project's S3 datastores.

The platform never hands out a datastore's keys: it presigns URLs with them
(`.../objects/presign/`), and the bytes go straight between this machine and
the object store, streamed in chunks (never a whole file in memory), several
files at once, with progress bars for bytes and files on stderr.
"""

import contextlib
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Optional

import httpx
import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from . import output
from .client import ApiClient, ApiError, Unreachable, _reason
from .context import api
from .output import Format, OutputOption

app = typer.Typer(
    help="Objects in the project's S3 datastores, moved directly to and from the object store "
    "through URLs the platform presigns.",
    no_args_is_help=True,
)

CHUNK = 1024 * 1024
PRESIGN_BATCH = 100
# Files this large go up in parts, several at once (and may pass S3's 5 GiB for one PUT).
MULTIPART_THRESHOLD = 64 * 1024**2
ATTEMPTS = 3
RETRY_DELAY = 0.5  # seconds, doubled at each try
TRANSFER_TIMEOUT = httpx.Timeout(60.0, connect=10.0)

AliasArg = Annotated[
    str,
    typer.Argument(
        metavar="ALIAS", help="An s3 datastore's alias (`nbc datastore list`).", show_default=False
    ),
]
ContainerArg = Annotated[
    str,
    typer.Argument(
        metavar="CONTAINER", help="The container (bucket) in that datastore.", show_default=False
    ),
]
PrefixOption = Annotated[str, typer.Option("--prefix", "-p", help="Only keys starting with this.")]
JobsOption = Annotated[
    int,
    typer.Option(
        "--jobs", "-j", min=1, max=32, help="Requests at the same time (files, or parts of one)."
    ),
]


class TransferFailed(Exception):
    """One object could not be moved: the object store's answer, in a sentence."""


@dataclass
class Item:
    key: str
    path: Path
    size: Optional[int]  # None: learnt from the download's Content-Length


def _objects_path(client: ApiClient, alias: str, container: str, suffix: str = "") -> str:
    return client.project_path(f"datastores/{alias}/containers/{container}/objects/{suffix}")


def iter_objects(client: ApiClient, alias: str, container: str, prefix: str = "") -> Iterator[dict]:
    """Every object under `prefix`, page after page."""
    path, cursor = _objects_path(client, alias, container), None
    while True:
        page = client.get(path, prefix=prefix, cursor=cursor)
        yield from page["results"]
        cursor = page.get("next_cursor")
        if not cursor:
            return


def presign(client: ApiClient, alias: str, container: str, method: str, keys: list[str]) -> dict:
    """{key: url} for `keys`, asked in batches."""
    urls: dict[str, str] = {}
    for start in range(0, len(keys), PRESIGN_BATCH):
        answer = client.post(
            _objects_path(client, alias, container, "presign/"),
            {"method": method, "keys": keys[start : start + PRESIGN_BATCH]},
        )
        urls.update({u["key"]: u["url"] for u in answer["urls"]})
    return urls


# Moving bytes.


def _store_error(response: httpx.Response, key: str) -> TransferFailed:
    """The object store's XML error (`<Code>`, `<Message>`) as one sentence."""
    code = re.search(r"<Code>(.*?)</Code>", response.text or "")
    message = re.search(r"<Message>(.*?)</Message>", response.text or "")
    if response.status_code == 404 and code and code.group(1) == "NoSuchKey":
        return TransferFailed(f"{key}: no such object")
    detail = ": ".join(m.group(1) for m in (code, message) if m) or response.reason_phrase
    return TransferFailed(
        f"{key}: the object store answered HTTP {response.status_code} ({detail})"
    )


class _Retry(Exception):
    """A failure worth another try: the network, or a 5xx (S3 asks clients to retry)."""


def _retrying(key: str, attempt: Callable[[], None]) -> None:
    for number in range(1, ATTEMPTS + 1):
        try:
            return attempt()
        except _Retry as exc:
            failure = str(exc)
        except httpx.TransportError as exc:
            failure = f"{key}: cannot reach the object store: {_reason(exc)}"
        if number == ATTEMPTS:
            raise TransferFailed(failure)
        time.sleep(RETRY_DELAY * 2**number)


@dataclass
class Piece:
    """What one request moves: a whole file, or one part of a multipart upload."""

    item: Item
    url: str
    offset: int = 0
    length: Optional[int] = None  # None: the whole file
    part: Optional[int] = None
    etag: str = ""

    @property
    def name(self) -> str:
        return self.item.key if self.part is None else f"{self.item.key} (part {self.part})"


def upload_piece(
    http: httpx.Client,
    piece: Piece,
    advance: Callable[[int], None],
    announce: Callable[[int], None],
) -> None:
    """PUT a file, or a part of it, to a presigned URL, streamed with its length announced."""
    item = piece.item
    length = item.size if piece.length is None else piece.length

    def attempt():
        sent = 0

        def chunks():
            nonlocal sent
            with open(item.path, "rb") as f:
                f.seek(piece.offset)
                left = length
                while left > 0 and (chunk := f.read(min(CHUNK, left))):
                    left -= len(chunk)
                    sent += len(chunk)
                    advance(len(chunk))
                    yield chunk

        try:
            # S3 refuses chunked transfer encoding: the length is given up front.
            response = http.put(
                piece.url, content=chunks(), headers={"Content-Length": str(length)}
            )
        except BaseException:
            advance(-sent)
            raise
        if response.status_code >= 300:
            advance(-sent)
            error = _store_error(response, piece.name)
            raise _Retry(error) if response.status_code >= 500 else error
        piece.etag = response.headers.get("etag", "")

    _retrying(piece.name, attempt)


def download_piece(
    http: httpx.Client,
    piece: Piece,
    advance: Callable[[int], None],
    announce: Callable[[int], None],
) -> None:
    """GET one object into its path, through a temporary file renamed when complete."""
    item = piece.item
    item.path.parent.mkdir(parents=True, exist_ok=True)
    partial = item.path.with_name(f".{item.path.name}.nbc-partial")

    def attempt():
        received = 0
        try:
            with http.stream("GET", piece.url) as response:
                if response.status_code >= 300:
                    response.read()
                    error = _store_error(response, item.key)
                    raise _Retry(error) if response.status_code >= 500 else error
                length = int(response.headers.get("content-length", 0))
                if item.size is None:
                    item.size = length
                    announce(length)
                with open(partial, "wb") as f:
                    for chunk in response.iter_bytes(CHUNK):
                        f.write(chunk)
                        received += len(chunk)
                        advance(len(chunk))
        except BaseException:
            advance(-received)
            partial.unlink(missing_ok=True)
            raise
        if received != item.size:
            partial.unlink(missing_ok=True)
            raise TransferFailed(f"{item.key}: got {received} bytes of {item.size}")
        os.replace(partial, item.path)

    _retrying(item.key, attempt)


def transfer(pieces: list[Piece], work: Callable, verb: str, jobs: int) -> tuple[int, dict]:
    """Move `pieces` with `jobs` threads and two progress bars; (bytes moved, {key: error})."""
    items = list({id(p.item): p.item for p in pieces}.values())
    left = Counter(p.item.key for p in pieces)
    known = sum(i.size or 0 for i in items)
    lock = threading.Lock()
    errors: dict[str, str] = {}
    columns = (TextColumn("{task.description:<9}"), BarColumn(), _Amount(), TimeRemainingColumn())
    with (
        Progress(*columns, console=output.err_console()) as progress,
        httpx.Client(timeout=TRANSFER_TIMEOUT, limits=httpx.Limits(max_connections=jobs)) as http,
    ):
        data = progress.add_task(verb, total=known or None, unit="bytes")
        files = progress.add_task("files", total=len(items), unit="files")

        def advance(n: int):
            with lock:
                progress.advance(data, n)

        def announce(n: int):
            with lock:
                progress.update(data, total=(progress.tasks[data].total or 0) + n)

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(work, http, p, advance, announce): p for p in pieces}
            for future in as_completed(futures):
                key = futures[future].item.key
                try:
                    future.result()
                except (TransferFailed, OSError) as exc:
                    message = str(exc) if isinstance(exc, TransferFailed) else f"{key}: {exc}"
                    if key not in errors:
                        errors[key] = message
                        progress.console.print(Text(f"failed: {message}", style="red"))
                with lock:
                    left[key] -= 1
                    if not left[key]:
                        progress.advance(files, 1)
        moved = int(progress.tasks[data].completed)
    return moved, errors


class _Amount(ProgressColumn):
    """Bytes and speed on the bytes bar, a count on the files bar."""

    def __init__(self):
        super().__init__()
        self.size, self.speed, self.count = (
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            MofNCompleteColumn(),
        )

    def render(self, task: Task) -> Text:
        if task.fields.get("unit") == "bytes":
            return Text.assemble(self.size.render(task), "  ", self.speed.render(task))
        return self.count.render(task)


def _upload_pieces(
    client: ApiClient, alias: str, container: str, items: list[Item]
) -> tuple[list[Piece], dict[str, str]]:
    """A PUT a small file; a large one in parts (an upload each: {key: upload_id})."""
    whole = [i for i in items if i.size < MULTIPART_THRESHOLD]
    urls = presign(client, alias, container, "put", [i.key for i in whole]) if whole else {}
    pieces = [Piece(i, urls[i.key]) for i in whole]
    uploads: dict[str, str] = {}
    try:
        for item in items:
            if item.size < MULTIPART_THRESHOLD:
                continue
            upload = client.post(
                _objects_path(client, alias, container, "multipart/"),
                {"key": item.key, "size": item.size},
            )
            uploads[item.key] = upload["upload_id"]
            each = upload["part_size"]
            for part in upload["parts"]:
                offset = (part["part_number"] - 1) * each
                pieces.append(
                    Piece(
                        item,
                        part["url"],
                        offset,
                        min(each, item.size - offset),
                        part["part_number"],
                    )
                )
    except BaseException:
        _abort(client, alias, container, uploads)
        raise
    return pieces, uploads


def _abort(client: ApiClient, alias: str, container: str, uploads: dict[str, str]) -> None:
    for key, upload_id in uploads.items():
        with contextlib.suppress(ApiError, Unreachable):
            client.post(
                _objects_path(client, alias, container, "multipart/abort/"),
                {"key": key, "upload_id": upload_id},
            )


def _complete(
    client: ApiClient,
    alias: str,
    container: str,
    pieces: list[Piece],
    uploads: dict[str, str],
    errors: dict[str, str],
) -> None:
    """Join the parts of each upload whose parts all arrived; give up the others."""
    _abort(client, alias, container, {k: u for k, u in uploads.items() if k in errors})
    for key, upload_id in uploads.items():
        if key in errors:
            continue
        parts = [{"part_number": p.part, "etag": p.etag} for p in pieces if p.item.key == key]
        try:
            client.post(
                _objects_path(client, alias, container, "multipart/complete/"),
                {"key": key, "upload_id": upload_id, "parts": parts},
            )
        except ApiError as exc:
            errors[key] = f"{key}: {exc.message}"


def _move(
    client: ApiClient,
    alias: str,
    container: str,
    items: list[Item],
    method: str,
    wanted: int,
    where: str,
    jobs: int,
    errors: Optional[dict[str, str]] = None,
) -> None:
    """Presign, move and report: `put` uploads `items`, `get` downloads them.

    `wanted` counts the files asked for, `errors` what failed before any move.
    """
    errors = dict(errors or {})
    started = time.monotonic()
    uploads: dict[str, str] = {}
    if method == "put":
        pieces, uploads = _upload_pieces(client, alias, container, items)
        work, verb = upload_piece, "upload"
    else:
        urls = presign(client, alias, container, "get", [i.key for i in items]) if items else {}
        pieces = [Piece(i, urls[i.key]) for i in items]
        work, verb = download_piece, "download"
    try:
        moved, failed = transfer(pieces, work, verb, jobs)
    except BaseException:
        _abort(client, alias, container, uploads)
        raise
    _complete(client, alias, container, pieces, uploads, failed)
    errors.update(failed)
    seconds = time.monotonic() - started
    rate = moved / seconds / 1024**2 if seconds > 0 else 0
    output.note(
        f"{verb.capitalize()}ed {len(items) - len(failed)} of {wanted} "
        f"file{'s' if wanted != 1 else ''} ({output.size(moved)}) {where} in {seconds:.1f} s "
        f"({rate:.1f} MiB/s).",
        style="",
    )
    if errors:
        shown = list(errors.values())
        text = "; ".join(shown[:5]) + (f"; and {len(shown) - 5} more" if len(shown) > 5 else "")
        raise TransferFailed(f"{len(shown)} {verb}s failed: {text}")


# Commands.


@app.command("list")
def list_(
    alias: AliasArg,
    container: ContainerArg,
    prefix: PrefixOption = "",
    fmt: OutputOption = Format.table,
):
    """The objects in a container: key, size, last modified."""
    client = api()
    items = list(iter_objects(client, alias, container, prefix))

    def render(rows):
        if not rows:
            return Text(
                f"No objects in {container}@{alias}" + (f" under {prefix!r}." if prefix else "."),
                style="dim",
            )
        output.note(f"{len(rows)} objects, {output.size(sum(r['size'] for r in rows))}.")
        return output.table(
            ["KEY", "SIZE", "MODIFIED", "ETAG"],
            [
                [r["key"], output.size(r["size"]), output.when(r["last_modified"]), r["etag"]]
                for r in rows
            ],
        )

    output.emit(items, fmt, render)


def _local_files(paths: list[Path], prefix: str) -> list[Item]:
    """Files to upload and their keys: a file by its name, a folder by its name and its tree."""
    items: dict[str, Item] = {}
    for given in paths:
        path = given.expanduser()
        if path.is_dir():
            base = path.resolve().parent
            found = sorted(p for p in path.resolve().rglob("*") if p.is_file())
        elif path.is_file():
            base, found = path.resolve().parent, [path.resolve()]
        else:
            raise typer.BadParameter(f"{given} is not a file or a folder", param_hint="PATH")
        for file in found:
            key = prefix + file.relative_to(base).as_posix()
            if key in items and items[key].path != file:
                raise typer.BadParameter(
                    f"{items[key].path} and {file} would both be uploaded as {key!r}",
                    param_hint="PATH",
                )
            items[key] = Item(key, file, file.stat().st_size)
    return list(items.values())


@app.command("upload")
def upload(
    alias: AliasArg,
    container: ContainerArg,
    paths: Annotated[
        list[Path],
        typer.Argument(
            metavar="PATH",
            help="Files or folders (a folder is uploaded with its tree).",
            show_default=False,
        ),
    ],
    prefix: Annotated[
        str, typer.Option("--prefix", "-p", help="Put before every key, e.g. runs/7/.")
    ] = "",
    jobs: JobsOption = 8,
):
    """Upload files: each becomes the object PREFIX + its name (a folder's files: PREFIX +
    folder/path). Example: nbc data upload lake datasets ./images --prefix v2/"""
    items = _local_files(paths, prefix)
    if not items:
        raise typer.BadParameter("no files to upload in the given paths", param_hint="PATH")
    _move(api(), alias, container, items, "put", len(items), f"to {container}@{alias}", jobs)


def _local_path(root: Path, key: str) -> Path:
    """Where an object lands under `root`; a key that would escape it is refused."""
    parts = PurePosixPath(key).parts
    if key.startswith("/") or any(p in ("..", ".") for p in parts) or not parts:
        raise TransferFailed(f"{key}: this key would be written outside {root}; not downloaded")
    return root.joinpath(*parts)


@app.command("download")
def download(
    alias: AliasArg,
    container: ContainerArg,
    keys: Annotated[
        Optional[list[str]],
        typer.Argument(
            metavar="KEY",
            help="Object keys (left out: every object under --prefix).",
            show_default=False,
        ),
    ] = None,
    prefix: PrefixOption = "",
    to: Annotated[
        Path, typer.Option("--to", "-d", help="The folder to download into.", file_okay=False)
    ] = Path("."),
    jobs: JobsOption = 8,
):
    """Download objects into a folder, each at its key's path.
    Example: nbc data download lake datasets --prefix v2/ --to ./data"""
    client = api()
    if keys:
        if prefix:
            raise typer.BadParameter("give KEYs or --prefix, not both", param_hint="--prefix")
        wanted = [(k, None) for k in dict.fromkeys(keys)]
    else:
        wanted = [
            (o["key"], o["size"])
            for o in iter_objects(client, alias, container, prefix)
            if not o["key"].endswith("/")  # folder markers hold no data
        ]
    if not wanted:
        output.note(
            f"No objects in {container}@{alias}" + (f" under {prefix!r}." if prefix else ".")
        )
        return
    items, errors = [], {}
    for key, size in wanted:
        try:
            items.append(Item(key, _local_path(to, key), size))
        except TransferFailed as exc:
            errors[key] = str(exc)
    _move(client, alias, container, items, "get", len(wanted), f"into {to}", jobs, errors)
