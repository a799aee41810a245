"""Where notebooks are reached: their public URL, and the notebook a request is for.

Each notebook is served on an origin of its own,
`<scheme>://<id>.<NBCLOUD_NOTEBOOK_DOMAIN>[:<port>]/notebooks/<id>/`, so that
one notebook's pages cannot script another's nor the platform (JupyterHub's
security notes explain why only separate origins isolate users). The scheme
and port are NBCLOUD_PUBLIC_URL's. On the embedded default (a public URL on
127.0.0.1 or localhost) the domain is `localhost`: browsers resolve
`*.localhost` to loopback by themselves (RFC 6761). Without a domain (a
public URL elsewhere and NBCLOUD_NOTEBOOK_DOMAIN unset), notebooks share the
platform's origin under `/notebooks/<id>/`.
"""

import re
from urllib.parse import urlsplit

from django.conf import settings

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
UUID_RE = re.compile(UUID)
PATH = re.compile(rf"^/notebooks/(?P<id>{UUID})(/|$)")
HOST = re.compile(rf"^(?P<id>{UUID})\.(?P<domain>.+)$")
# The gateway's own paths on a notebook's origin (outside any editor's base URL).
HANDOFF_PATH = "/_nbcloud/handoff"
LOGOUT_PATH = "/_nbcloud/logout"


def platform_url(path: str) -> str:
    """The platform's own address of `path` (e.g. /gateway/login/)."""
    return settings.NBCLOUD_PUBLIC_URL + path


def base_path(notebook_id) -> str:
    return f"/notebooks/{notebook_id}/"


def per_notebook_origins() -> bool:
    return bool(settings.NBCLOUD_NOTEBOOK_DOMAIN)


def _public() -> tuple[str, int | None]:
    public = urlsplit(settings.NBCLOUD_PUBLIC_URL)
    return public.scheme or "https", public.port


def origin(notebook_id) -> str:
    """The notebook's own origin (the platform's, without a notebook domain)."""
    domain = settings.NBCLOUD_NOTEBOOK_DOMAIN
    if not domain:
        public = urlsplit(settings.NBCLOUD_PUBLIC_URL)
        return f"{public.scheme}://{public.netloc}"
    scheme, port = _public()
    return f"{scheme}://{notebook_id}.{domain}" + (f":{port}" if port else "")


def public_url(notebook_id) -> str:
    return origin(notebook_id) + base_path(notebook_id)


def notebook_id_of(path: str) -> str | None:
    match = PATH.match(path)
    return match["id"] if match else None


def _hostname(host: str) -> str:
    if host.startswith("["):  # an IPv6 literal
        return host.split("]")[0].lower() + "]"
    return host.rsplit(":", 1)[0].lower() if ":" in host else host.lower()


def notebook_of_host(host: str) -> str | None:
    """The notebook whose own origin `host` (a Host header) is, if any."""
    domain = settings.NBCLOUD_NOTEBOOK_DOMAIN
    if not domain:
        return None
    match = HOST.match(_hostname(host))
    if match is None or match["domain"] != domain.lower():
        return None
    return match["id"]


def host_allowed(notebook_id: str, host: str) -> bool:
    """With per-notebook origins, a notebook answers only on its own host name."""
    if not settings.NBCLOUD_NOTEBOOK_DOMAIN:
        return True
    return notebook_of_host(host) == str(notebook_id).lower()
