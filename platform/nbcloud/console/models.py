"""Invitations: a one-time link an owner gives someone to join a project with a role."""

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from nbcloud.projects.models import Project, Role

INVITATION_AGE = timedelta(days=7)


def hash_code(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


class Invitation(models.Model):
    """Only a hash of the link's code is kept: the link is shown once, to its maker."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="invitations")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.READ)
    note = models.CharField(max_length=200, blank=True, help_text="Who it is for, as a reminder.")
    code_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.role} of {self.project} ({self.note or 'invitation'})"

    @classmethod
    def issue(cls, **fields) -> tuple["Invitation", str]:
        """A new invitation and its code, which is not stored."""
        code = secrets.token_urlsafe(32)
        invitation = cls.objects.create(
            code_hash=hash_code(code), expires_at=timezone.now() + INVITATION_AGE, **fields
        )
        return invitation, code

    @property
    def is_expired(self) -> bool:
        return self.expires_at <= timezone.now()


class SingleSignOnIdentity(models.Model):
    """Who a person is at the OpenID Connect provider: its issuer and their `sub`.

    People signing in with single sign-on are found by this pair, never by e-mail
    address or user name, so an account at the provider can never take over an
    account made here by other means.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sso_identity"
    )
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(default=timezone.now)
    last_sign_in_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["issuer", "subject"], name="unique_sso_identity")
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.subject} at {self.issuer})"
