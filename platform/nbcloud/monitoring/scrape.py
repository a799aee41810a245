"""Who may scrape metrics: a bearer NBCLOUD_METRICS_TOKEN, from anywhere, loopback too.

Asked by the platform's `/metrics` and by each host worker's metrics port
(workers/sampler.py). Notebooks share hosts with both, so a client address
proves nothing: only the token opens them, and none is open without one.
"""

import hmac

from django.conf import settings


def refusal(authorization: str) -> tuple[int, str] | None:
    """None when `authorization` (the header's value) may scrape; else (status, why)."""
    token = settings.NBCLOUD_METRICS_TOKEN
    if not token:
        return (
            403,
            "Metrics are closed: no scrape token is configured. Set NBCLOUD_METRICS_TOKEN and "
            "send it as 'Authorization: Bearer <token>'.",
        )
    scheme, _, value = authorization.partition(" ")
    if not authorization:
        return (401, "Metrics need 'Authorization: Bearer <NBCLOUD_METRICS_TOKEN>'.")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        value.strip().encode(), token.encode()
    ):
        return (401, "Wrong metrics token: send 'Authorization: Bearer <NBCLOUD_METRICS_TOKEN>'.")
    return None


def code_of(status: int) -> str:
    return "forbidden" if status == 403 else "not_authenticated"
