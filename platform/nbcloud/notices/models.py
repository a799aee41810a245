import secrets
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from nbcloud.projects.models import Project


class Kind(models.TextChoices):
    """What a notice is about; webhooks carry it as `kind` and X-Nbcloud-Event."""

    BUDGET_WARNING = "budget.warning", "budget warning"
    BUDGET_EXCEEDED = "budget.exceeded", "budget exceeded"
    IDLE_WARNING = "notebook.idle_warning", "idle warning"
    IDLE_STOPPED = "notebook.idle_stopped", "stopped for idleness"
    NOTEBOOK_FAILED = "notebook.failed", "notebook FAILED"
    HOST_LOST = "host.lost", "host lost"
    TEST = "test", "test notice"


# What a target may subscribe to (a test notice goes to the one target tested).
SUBSCRIBABLE = [kind for kind in Kind if kind != Kind.TEST]


class NoticeTarget(models.Model):
    """Where a project's notices go: one email address or one webhook URL.

    A webhook's signing secret is sealed at rest (`projects.secrets`) and shown
    once, when it is made (at creation and at each rotation).
    """

    class Type(models.TextChoices):
        EMAIL = "email", "email"
        WEBHOOK = "webhook", "webhook"

    SECRET_PREFIX = "whsec_"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="notice_targets")
    name = models.CharField(max_length=100)
    type = models.CharField(max_length=8, choices=Type.choices)
    address = models.EmailField(blank=True, help_text="email: where notices are sent.")
    url = models.CharField(max_length=2000, blank=True, help_text="webhook: http(s) URL.")
    sealed_secret = models.TextField(blank=True, editable=False)
    kinds = models.JSONField(
        default=list, blank=True, help_text="The kinds of notice sent here; empty: every kind."
    )
    enabled = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["project", "name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="unique_notice_target_name")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.type}) in {self.project}"

    @property
    def destination(self) -> str:
        return self.address if self.type == self.Type.EMAIL else self.url

    def wants(self, kind: str) -> bool:
        return self.enabled and (not self.kinds or kind in self.kinds)

    def new_secret(self) -> str:
        """A new signing secret, sealed on the row (not saved) and returned in clear."""
        from nbcloud.projects.secrets import seal

        value = self.SECRET_PREFIX + secrets.token_urlsafe(32)
        self.sealed_secret = seal({"secret": value})
        return value

    def secret(self) -> str:
        from nbcloud.projects.secrets import unseal

        return unseal(self.sealed_secret)["secret"] if self.sealed_secret else ""


class Notice(models.Model):
    """Something that happened and needs a person. A non-empty `key` makes it once only
    (per project and kind): a budget warns once a month, a host is lost once."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="notices")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    key = models.CharField(max_length=200, blank=True)
    subject = models.CharField(max_length=300)
    message = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["created_at"], name="notice_created")]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "kind", "key"], condition=~Q(key=""), name="unique_notice_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} in {self.project}: {self.subject}"


class DeliveryState(models.TextChoices):
    PENDING = "PENDING", "waiting for its first attempt"
    SENDING = "SENDING", "being sent"
    RETRYING = "RETRYING", "failed, tried again later"
    DELIVERED = "DELIVERED", "delivered"
    FAILED = "FAILED", "given up"


# A delivery in these states still has an attempt to come.
OPEN_STATES = frozenset({DeliveryState.PENDING, DeliveryState.SENDING, DeliveryState.RETRYING})
CLAIMABLE_STATES = frozenset({DeliveryState.PENDING, DeliveryState.RETRYING})


class Delivery(models.Model):
    """One notice to one target: the delivery log the project's owners read."""

    notice = models.ForeignKey(Notice, on_delete=models.CASCADE, related_name="deliveries")
    target = models.ForeignKey(NoticeTarget, on_delete=models.CASCADE, related_name="deliveries")
    state = models.CharField(
        max_length=10, choices=DeliveryState.choices, default=DeliveryState.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    response_status = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="delivery_due")]
        verbose_name_plural = "deliveries"

    def __str__(self) -> str:
        return f"{self.notice.kind} to {self.target.name}: {self.state}"
