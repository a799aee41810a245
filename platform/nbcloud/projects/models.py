import hashlib
import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

from nbcloud.errors import NotAuthenticated
from nbcloud.notebooks import spec

slug_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9-]{0,62}$",
    "use 1 to 63 lowercase letters, digits and dashes, starting with a letter or digit",
)


class Role(models.TextChoices):
    READ = "read", "read"
    OPERATOR = "operator", "operator"
    OWNER = "owner", "owner"


# What each role may do through the API, the console and at the gateway
# (nbcloud.api.access.may asks these): `read` looks; `operator` also creates,
# changes, starts, stops and deletes; `owner` also manages the project's
# members, tokens and datastores.
WRITE_ROLES = frozenset({Role.OPERATOR, Role.OWNER})
MANAGER_ROLES = frozenset({Role.OWNER})
# An app token acts for a program, never as the project's owner.
TOKEN_ROLES = [(Role.READ.value, Role.READ.label), (Role.OPERATOR.value, Role.OPERATOR.label)]


def default_gpu_quota() -> int:
    return settings.NBCLOUD_PROJECT_GPU_QUOTA


class Project(models.Model):
    name = models.CharField(max_length=63, unique=True, validators=[slug_validator])
    gpu_quota = models.PositiveIntegerField(
        default=default_gpu_quota,
        help_text="GPUs the project may use at once (queued, starting, running, stopping).",
    )
    default_idle_timeout = models.PositiveIntegerField(
        null=True, blank=True, help_text="Seconds; notebooks idle this long are stopped."
    )
    default_max_runtime = models.PositiveIntegerField(
        null=True, blank=True, help_text="Seconds a notebook may run before it is stopped."
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
    from_sso = models.BooleanField(
        default=False,
        help_text="Made by single sign-on: it follows the provider's claim at every sign-in "
        "(added, changed, removed). Memberships granted by hand are never touched by it.",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="unique_membership")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.project} ({self.role})"


def hash_token(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


Terms = list[tuple[str, str, str]]


def parse_token_selector(selector: str) -> Terms:
    """A token's label selector -> its terms; raises ValidationError if unusable.

    Beyond the selector syntax: a key may have one `=` term only (two would
    match nothing and could not both be given to a new notebook), and `=`
    terms may not use the platform's reserved keys (notebooks created with the
    token receive them as labels).
    """
    terms = spec.parse_label_selector(selector or "")
    equal: dict[str, str] = {}
    for key, op, value in terms:
        if op != "=":
            continue
        if key.startswith(spec.PLATFORM_LABEL_PREFIX):
            raise ValidationError(
                f"label selector term {key}={value}: keys starting "
                f"{spec.PLATFORM_LABEL_PREFIX!r} are reserved"
            )
        if key in equal and equal[key] != value:
            raise ValidationError(
                f"label selector sets {key!r} twice ({key}={equal[key]}, {key}={value}): "
                "it would match nothing"
            )
        equal[key] = value
    return terms


def format_selector(terms: Terms) -> str:
    """Terms -> the selector's canonical text: 'k=v,k2!=v2', duplicates dropped."""
    return ",".join(dict.fromkeys(f"{k}{op}{v}" for k, op, v in terms))


def validate_label_selector(selector: str) -> None:
    parse_token_selector(selector)


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()


class ApiToken(models.Model):
    """A bearer token for the API, bound to one project and one role.

    Only a SHA-256 of the value is stored; the value is shown once, at creation
    (and at each renewal). Tokens are long random strings, so a fast hash is
    enough (as for GitHub's tokens); a slow password hash would only slow every
    request.

    A token with a label selector reaches only the notebooks whose labels
    match it (`allows`); notebooks it creates receive the selector's `=` terms
    as labels.
    """

    PREFIX = "nbc_"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tokens")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    role = models.CharField(max_length=16, choices=TOKEN_ROLES, default=Role.OPERATOR)
    label_selector = models.CharField(
        max_length=1000,
        blank=True,
        validators=[validate_label_selector],
        help_text="e.g. team=vision,env!=prod: the token reaches only the notebooks whose "
        "labels match. Empty: every notebook of the project.",
    )
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
    def _new_value(cls) -> str:
        return cls.PREFIX + secrets.token_urlsafe(32)

    @classmethod
    def issue(cls, **fields) -> tuple["ApiToken", str]:
        """Create a token and return it with its value, which is not stored."""
        if fields.get("label_selector"):
            fields["label_selector"] = format_selector(
                parse_token_selector(fields["label_selector"])
            )
        value = cls._new_value()
        token = cls.objects.create(key_hash=hash_token(value), key_prefix=value[:8], **fields)
        return token, value

    @classmethod
    def for_value(cls, value: str) -> "ApiToken":
        """The live token with this value (now marked used), or NotAuthenticated saying why not."""
        if not value:
            raise NotAuthenticated("Bearer token missing after 'Bearer'.")
        found = cls.objects.select_related("user", "project").filter(key_hash=hash_token(value))
        token = found.first()
        if token is None:
            raise NotAuthenticated("Unknown API token.")
        if token.is_expired:
            raise NotAuthenticated(
                f"API token {token.name!r} expired at {token.expires_at.isoformat()}."
            )
        if not token.user.is_active:
            raise NotAuthenticated("The token's user is disabled.")
        cls.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        return token

    def renew(self, *, expires_at=KEEP) -> str:
        """Replace the key and return the new value, which is not stored.

        The old value stops working at once. `expires_at` sets a new expiry
        (None: never); left out, the expiry stays as it is.
        """
        value = self._new_value()
        self.key_hash, self.key_prefix = hash_token(value), value[:8]
        fields = ["key_hash", "key_prefix"]
        if expires_at is not KEEP:
            self.expires_at = expires_at
            fields.append("expires_at")
        self.save(update_fields=fields)
        return value

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def selector_terms(self) -> Terms:
        return spec.parse_label_selector(self.label_selector) if self.label_selector else []

    def selector_labels(self) -> dict[str, str]:
        """The labels the selector requires (its `=` terms)."""
        return {k: v for k, op, v in self.selector_terms if op == "="}

    def allows(self, labels: dict) -> bool:
        """Whether this token may reach a notebook with these labels."""
        if not self.label_selector:
            return True
        return spec.labels_match(labels or {}, self.selector_terms)


class Datastore(models.Model):
    """Where a project's volumes come from: an S3-compatible object store or a git host.

    Credentials are sealed (`projects.secrets`) and never returned by the API.
    """

    class Type(models.TextChoices):
        S3 = "s3", "S3-compatible object storage"
        GIT = "git", "git"

    SECRET_FIELDS = {"s3": ("secret_key",), "git": ("password", "ssh_private_key")}

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="datastores")
    alias = models.CharField(max_length=63, validators=[slug_validator])
    type = models.CharField(max_length=8, choices=Type.choices)
    endpoint = models.URLField(blank=True, help_text="S3: the endpoint URL (empty: AWS).")
    region = models.CharField(max_length=64, blank=True)
    access_key = models.CharField(max_length=256, blank=True)
    host = models.CharField(max_length=255, blank=True, help_text="git: the host name.")
    username = models.CharField(max_length=255, blank=True)
    sealed_secrets = models.TextField(editable=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["project", "alias"]
        constraints = [
            models.UniqueConstraint(fields=["project", "alias"], name="unique_datastore_alias")
        ]

    def __str__(self) -> str:
        return f"{self.alias} ({self.type}) in {self.project}"

    def set_secrets(self, values: dict[str, str]) -> None:
        from .secrets import seal

        self.sealed_secrets = seal({k: v for k, v in values.items() if v})

    def secrets(self) -> dict[str, str]:
        from .secrets import unseal

        return unseal(self.sealed_secrets)

    def s3_client(self, **config):
        """A boto3 S3 client for this datastore (type s3), as production would build it."""
        import boto3
        from botocore.config import Config

        if self.type != self.Type.S3:
            raise ValueError(f"datastore {self.alias!r} is a {self.type} datastore, not s3")
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint or None,
            region_name=self.region or None,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secrets().get("secret_key", ""),
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                s3={"addressing_style": "path"},
                **config,
            ),
        )
