"""Who may open SSH sessions (members' own keys), and where each host serves them."""

from django.conf import settings
from django.db import models
from django.utils import timezone


class SshKey(models.Model):
    """A public key on a person's account: it opens the notebooks that person may operate."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ssh_keys"
    )
    name = models.CharField(max_length=100)
    # The OpenSSH line as given (algorithm, base64, comment), and its SHA256
    # fingerprint, which is what the gateway looks keys up by.
    public_key = models.TextField()
    fingerprint = models.CharField(max_length=64, db_index=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["user", "fingerprint"], name="one_key_once_per_user"),
            models.UniqueConstraint(fields=["user", "name"], name="ssh_key_names_unique_per_user"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.fingerprint}) of {self.user}"


class HostEndpoint(models.Model):
    """Where a host's worker serves the sessions the gateway relays to it.

    The host writes it when its worker starts (the port may be any free one);
    the gateway connects there and trusts only `host_key`.
    """

    host = models.OneToOneField(
        "hosts.Host", on_delete=models.CASCADE, primary_key=True, related_name="ssh_endpoint"
    )
    address = models.CharField(max_length=255)
    port = models.PositiveIntegerField()
    host_key = models.TextField(help_text="The endpoint's public host key (OpenSSH line).")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.host_id} at {self.address}:{self.port}"
