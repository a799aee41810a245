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
