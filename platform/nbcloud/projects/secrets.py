"""Secrets at rest (datastore credentials): Fernet, with a key from settings.

NBCLOUD_SECRETS_KEY (or its _FILE) is a Fernet key; without it, one is derived
from SECRET_KEY (HKDF-SHA256). Either way the key is not in the database, so a
database dump alone does not reveal the secrets.
"""

import base64
import json
from functools import cache

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@cache
def _fernet() -> Fernet:
    if settings.NBCLOUD_SECRETS_KEY:
        try:
            return Fernet(settings.NBCLOUD_SECRETS_KEY)
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"NBCLOUD_SECRETS_KEY is not a Fernet key (32 url-safe base64-encoded bytes): {exc}"
            ) from None
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"nbcloud secrets").derive(
        settings.SECRET_KEY.encode()
    )
    return Fernet(base64.urlsafe_b64encode(derived))


def seal(values: dict[str, str]) -> str:
    return _fernet().encrypt(json.dumps(values).encode()).decode()


def unseal(token: str) -> dict[str, str]:
    try:
        return json.loads(_fernet().decrypt(token.encode()))
    except InvalidToken:
        raise ImproperlyConfigured(
            "datastore secrets cannot be decrypted: NBCLOUD_SECRETS_KEY (or SECRET_KEY) changed"
        ) from None
