"""OpenSSH public key lines: parsed, checked and fingerprinted by asyncssh."""

import os

import asyncssh
from django.core.exceptions import ValidationError


def parse(line: str) -> asyncssh.SSHKey:
    """The key on an OpenSSH public key line ('ssh-ed25519 AAAA... me@laptop')."""
    try:
        return asyncssh.import_public_key(line.strip())
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ValidationError(
            f"not an OpenSSH public key line ({exc}); paste the one line of your .pub file, "
            "e.g. 'ssh-ed25519 AAAA... me@laptop'"
        ) from None


def fingerprint(key: asyncssh.SSHKey) -> str:
    """'SHA256:...', as `ssh-keygen -l` prints it."""
    return key.get_fingerprint("sha256")


def same_key(a: asyncssh.SSHKey, b: asyncssh.SSHKey) -> bool:
    return a.public_data == b.public_data


def host_key(path) -> asyncssh.SSHKey:
    """The private host key kept at `path` (0600), made on first use, so that clients'
    known_hosts stay true across restarts."""
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = asyncssh.generate_private_key("ssh-ed25519")
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key())
        tmp.replace(path)
    return asyncssh.read_private_key(str(path))


# Ciphers the platform's SSH servers offer, fastest first where AES has hardware
# support: asyncssh computes chacha20-poly1305 in more steps of its own, which
# halves a transfer's speed. Every OpenSSH client speaks AES-GCM.
CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr"]
# Larger windows and packets on the gateway's own hop to a host (both ends asyncssh).
RELAY_WINDOW = 8 * 1024 * 1024
RELAY_PACKET = 256 * 1024
