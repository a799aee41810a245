from django.conf import settings
from django.db import models


class HandoffCode(models.Model):
    """A one-time code handing a caller signed in on the platform's origin to a notebook's.

    Issued by the platform (`/gateway/handoff/`) to someone who may see the
    notebook, exchanged once by the gateway on the notebook's own origin for a
    cookie of that origin only, within NBCLOUD_HANDOFF_CODE_AGE seconds, and
    only by the browser that started the hand-off (its state cookie). Only
    hashes are stored.
    """

    code_hash = models.CharField(max_length=64, unique=True)
    state_hash = models.CharField(max_length=64)
    notebook = models.ForeignKey("notebooks.Notebook", on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.CASCADE, related_name="+"
    )
    token = models.ForeignKey(
        "projects.ApiToken", null=True, on_delete=models.CASCADE, related_name="+"
    )
    next_path = models.CharField(max_length=2048)
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"hand-off to {self.notebook_id} until {self.expires_at:%H:%M:%S}"
