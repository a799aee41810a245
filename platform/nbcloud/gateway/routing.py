"""Where notebooks are reached: their public URL, and the notebook a request is for.

Path-based by default (`{NBCLOUD_PUBLIC_URL}/notebooks/<id>/`). With
NBCLOUD_NOTEBOOK_DOMAIN set (a wildcard DNS name), each notebook gets an
origin of its own (`https://<id>.<domain>/notebooks/<id>/`), so one notebook's
pages cannot script another's (JupyterHub's security notes explain why only
separate origins isolate users); the path stays the editor's base URL.
"""

import re
from urllib.parse import urlsplit

from django.conf import settings

PATH = re.compile(
    r"^/notebooks/(?P<id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})(/|$)"
)


def base_path(notebook_id) -> str:
    return f"/notebooks/{notebook_id}/"


def public_url(notebook_id) -> str:
    domain = settings.NBCLOUD_NOTEBOOK_DOMAIN
    if domain:
        scheme = urlsplit(settings.NBCLOUD_PUBLIC_URL).scheme or "https"
        return f"{scheme}://{notebook_id}.{domain}{base_path(notebook_id)}"
    return settings.NBCLOUD_PUBLIC_URL.rstrip("/") + base_path(notebook_id)


def notebook_id_of(path: str) -> str | None:
    match = PATH.match(path)
    return match["id"] if match else None


def host_allowed(notebook_id: str, host: str) -> bool:
    """With per-notebook origins, a notebook answers only on its own host name."""
    domain = settings.NBCLOUD_NOTEBOOK_DOMAIN
    if not domain:
        return True
    return host.split(":")[0].lower() == f"{notebook_id}.{domain}".lower()
