from django.db import models


class OutboxMessage(models.Model):
    """A task written in the same transaction as the change that asks for it, and
    deleted once the broker took it: a broker that is down delays work, never loses it."""

    name = models.CharField(max_length=100)
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    options = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.name} {self.args} {self.kwargs}"
