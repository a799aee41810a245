import hashlib
import secrets

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

slug_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9-]{0,62}$",
    "use 1 to 63 lowercase letters, digits and dashes, starting with a letter or digit",
)


class Role(models.TextChoices):
    READ = "read", "read"
    OPERATOR = "operator", "operator"


# What each role may do through the API and at the gateway.
WRITE_ROLES = frozenset({Role.OPERATOR})


def default_gpu_quota() -> int:
    return settings.NBCLOUD_PROJECT_GPU_QUOTA


class Project(models.Model):
    name = models.CharField(max_length=63, unique=True, validators=[slug_validator])
    gpu_quota = models.PositiveIntegerField(
        default=default_gpu_quota,
        help_text="GPUs the project may use at once (queued, starting, running, stopping).",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def role_of(self, user) -> str | None:
        membership = self.memberships.filter(user=user).first() if user.is_authenticated else None
        return membership.role if membership else None


class Membership(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.OPERATOR)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="unique_membership")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.project} ({self.role})"


def hash_token(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class ApiToken(models.Model):
    """A bearer token for the API, bound to one project and one role.

    Only a SHA-256 of the value is stored; the value is shown once, at creation.
    Tokens are long random strings, so a fast hash is enough (as for GitHub's
    tokens); a slow password hash would only slow every request.
    """

    PREFIX = "nbc_"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tokens")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.OPERATOR)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    key_prefix = models.CharField(max_length=12, editable=False, help_text="To recognise it.")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["project", "name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.key_prefix}…)"

    @classmethod
    def issue(cls, **fields) -> tuple["ApiToken", str]:
        """Create a token and return it with its value, which is not stored."""
        value = cls.PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(key_hash=hash_token(value), key_prefix=value[:8], **fields)
        return token, value

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()
