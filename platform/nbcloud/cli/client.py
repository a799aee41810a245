"""A thin HTTP client for the nbcloud API (httpx), with the CLI's error kinds.

ApiError      the platform answered with an error: exit 1, its message as is
Unreachable   no answer (refused, DNS, timeout): exit 3, naming the URL
"""

import csv
import io
import re
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

import httpx

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
PAGE_SIZE = 500
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class ApiError(Exception):
    """The API refused: `{"code", "message", "fields"?}` and the HTTP status."""

    def __init__(self, status: int, code: str, message: str, fields: Optional[dict] = None):
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields or {}


class Unreachable(Exception):
    """The platform could not be reached at all."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"cannot reach the platform at {url}: {reason}")
        self.url, self.reason = url, reason


def _reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return f"no connection within {CONNECT_TIMEOUT:g} s"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {READ_TIMEOUT:g} s"
    text = str(exc) or type(exc).__name__
    # "[Errno 111] Connection refused" -> "connection refused"
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text.strip())
    return text[:1].lower() + text[1:]


def package_version() -> str:
    """The version of what `nbc` came with: its own distribution, or the whole project."""
    for distribution in ("nbcloud-cli", "nbcloud"):
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    return "dev"


class ApiClient:
    def __init__(
        self,
        url: str,
        token: str,
        project: Optional[str] = None,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        transport: Optional[httpx.BaseTransport] = None,
    ):
        self.url = url.rstrip("/")
        self.project = project
        self._http = httpx.Client(
            base_url=self.url + "/api/v1/",
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "User-Agent": f"nbc/{package_version()}",
            },
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    # Paths.

    def project_path(self, suffix: str = "") -> str:
        if not self.project:
            from .config import ConfigError

            raise ConfigError(
                "no project: pass --project, set NBC_PROJECT, or store one with "
                "`nbc login --project NAME`"
            )
        return f"projects/{self.project}/{suffix}"

    def notebook_path(self, notebook_id: str, suffix: str = "") -> str:
        return self.project_path(f"notebooks/{notebook_id}/{suffix}")

    # Requests.

    def request(self, method: str, path: str, *, raw: bool = False, **kwargs) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(self.url, _reason(exc)) from None
        if response.status_code >= 300:
            raise self._error(response)
        if raw:
            return response.text
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiError(
                response.status_code,
                "not_json",
                f"{response.request.url} answered something that is not JSON "
                f"({response.headers.get('content-type', 'no content type')}): is {self.url} "
                "an nbcloud platform?",
            ) from None

    def _error(self, response: httpx.Response) -> ApiError:
        status = response.status_code
        if 300 <= status < 400:
            return ApiError(
                status,
                "redirect",
                f"{response.request.url} redirects to {response.headers.get('location')}: "
                "check the platform URL (--url / NBC_URL)",
            )
        body: Any = None
        content_type = response.headers.get("content-type", "")
        try:
            if "csv" in content_type:
                body = next(iter(csv.DictReader(io.StringIO(response.text))), None)
            else:
                body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("message"):
            return ApiError(
                status, str(body.get("code") or "error"), str(body["message"]), body.get("fields")
            )
        if status == 404:
            message = (
                f"{response.request.url} answered 404 without an API error: is {self.url} an "
                "nbcloud platform?"
            )
        else:
            message = (
                f"the platform answered HTTP {status} {response.reason_phrase} to "
                f"{response.request.method} {response.request.url}"
            )
        return ApiError(status, "http_error", message)

    def get(self, path: str, **params) -> Any:
        return self.request("GET", path, params=_clean(params))

    def post_lines(self, path: str, json: Any) -> Iterator[dict]:
        """POST, then the JSON lines of a streamed answer as they come."""
        import json as jsonlib

        try:
            with self._http.stream("POST", path, json=json, timeout=None) as response:
                if response.status_code >= 300:
                    response.read()
                    raise self._error(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield jsonlib.loads(line)
        except httpx.TransportError as exc:
            raise Unreachable(self.url, _reason(exc)) from None

    def post(self, path: str, json: Any = None) -> Any:
        return self.request("POST", path, json=json if json is not None else {})

    def patch(self, path: str, json: Any) -> Any:
        return self.request("PATCH", path, json=json)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def get_all(self, path: str, **params) -> list:
        """Every item of a listing, page after page (or the list, if not paginated):
        through the `next` link's cursor where the listing gives one (no OFFSET), else
        by page number."""
        items: list = []
        where: dict = {"page": 1}
        while True:
            data = self.get(path, size=PAGE_SIZE, **where, **params)
            if not isinstance(data, dict) or "results" not in data:
                return data
            items.extend(data["results"])
            if not data.get("next"):
                return items
            cursor = parse_qs(urlsplit(data["next"]).query).get("after")
            where = {"after": cursor[0]} if cursor else {"page": where.get("page", 1) + 1}

    # Notebooks.

    def resolve_notebook(self, ref: str) -> str:
        """A notebook id from its id, a unique id prefix, or its name."""
        ref = ref.strip()
        if UUID.match(ref.lower()):
            return ref.lower()
        notebooks = self.get_all(self.project_path("notebooks/"))
        by_name = [nb for nb in notebooks if nb["spec"]["name"] == ref]
        matches = by_name or [nb for nb in notebooks if nb["id"].startswith(ref.lower())]
        if len(matches) == 1:
            return matches[0]["id"]
        if not matches:
            raise ApiError(
                404,
                "not_found",
                f"no notebook in project {self.project!r} has the id or name {ref!r}",
            )
        names = ", ".join(f"{nb['id']} ({nb['spec']['name']})" for nb in matches[:5])
        raise ApiError(
            400, "ambiguous", f"{ref!r} matches several notebooks: {names}; give the full id"
        )


def _clean(params: dict) -> dict:
    return {k: v for k, v in params.items() if v is not None and v != ""}
