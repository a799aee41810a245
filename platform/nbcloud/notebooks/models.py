import uuid

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from nbcloud.hosts.models import Host
from nbcloud.projects.models import Project

from .states import InfoCode, State
from .volumes import Volume
from .volumes import from_dict as volume_from_dict


class Notebook(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="notebooks")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    # The spec.
    name = models.CharField(max_length=100)
    labels = models.JSONField(default=dict, blank=True)
    framework_id = models.CharField(max_length=64)
    framework_version = models.CharField(max_length=64)
    editor_id = models.CharField(max_length=32)
    env_vars = models.JSONField(default=list, blank=True)
    flavor = models.CharField(max_length=64)
    gpu = models.PositiveSmallIntegerField(default=0)
    cpu = models.PositiveSmallIntegerField(default=0)
    region = models.CharField(max_length=16)
    volumes = models.JSONField(default=list, blank=True)
    unsecure_http = models.BooleanField(default=False)
    ssh_public_keys = models.JSONField(default=list, blank=True)
    timeout_auto_restart = models.BooleanField(default=False)
    # Limits in seconds; None: the project's default (None there: off).
    idle_timeout = models.PositiveIntegerField(null=True, blank=True)
    max_runtime = models.PositiveIntegerField(null=True, blank=True)
    # The backup this notebook was forked from, if any.
    forked_from = models.ForeignKey(
        "Backup", null=True, blank=True, on_delete=models.SET_NULL, related_name="forks"
    )

    # The status.
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    info_code = models.CharField(max_length=32, choices=InfoCode.choices, default=InfoCode.OK)
    info_message = models.TextField(blank=True)
    state_changed_at = models.DateTimeField(default=timezone.now)
    queued_at = models.DateTimeField(null=True, blank=True)
    last_started_at = models.DateTimeField(null=True, blank=True)
    last_stopped_at = models.DateTimeField(null=True, blank=True)
    workspace_size = models.BigIntegerField(null=True, blank=True)
    # Per volume while syncing: [{"volume", "direction": "pull"|"push", "state",
    # "files_done", "files_total", "bytes_done", "bytes_total", "message"}].
    data_sync = models.JSONField(default=list, blank=True)
    # Last sign of use (kernel busy, terminal, gateway traffic, GPU use).
    last_activity_at = models.DateTimeField(null=True, blank=True)

    # Placement: a notebook holds capacity on `host` exactly while host is set.
    host = models.ForeignKey(
        Host, null=True, blank=True, on_delete=models.PROTECT, related_name="notebooks"
    )
    gpu_uuids = models.JSONField(default=list, blank=True)
    # Where users open it (through the gateway), and where the gateway finds
    # the editor; the second never leaves the platform.
    url = models.URLField(blank=True)
    editor_url = models.URLField(blank=True, editable=False)
    # The editor's own secret; the platform passes it, users never need it
    # once the gateway fronts editors.
    editor_secret = models.CharField(max_length=64, blank=True, editable=False)
    # The runtime's JSON state (a pid, a port, a container id), so any worker
    # on the host can take over.
    runtime_state = models.JSONField(default=dict, blank=True)
    # The unprivileged uid (and gid) the notebook's editor runs as, on every
    # host: allocated once, never shared with another notebook, so a workspace
    # keeps its owner across restarts and notebooks cannot read each other.
    sandbox_uid = models.PositiveBigIntegerField(unique=True, null=True, editable=False)

    class Meta:
        ordering = ["created_at"]
        indexes = [
            models.Index(fields=["project", "state"]),
            # A project's list, in its order (ties by id): a page of a large project,
            # by number or by cursor (nbcloud.api.pagination.KeysetPagination).
            models.Index(fields=["project", "created_at", "id"], name="notebooks_by_project"),
            models.Index(fields=["state", "region", "queued_at"]),
            # The few running notebooks with a limit of their own (monitoring.limits).
            models.Index(
                fields=["state"],
                condition=models.Q(max_runtime__isnull=False),
                name="notebooks_with_max_runtime",
            ),
            models.Index(
                fields=["state"],
                condition=models.Q(idle_timeout__isnull=False),
                name="notebooks_with_idle_timeout",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"

    def save(self, *args, **kwargs):
        if self.sandbox_uid is None and self._state.adding:
            return allocate_sandbox_uid(self, lambda: super(Notebook, self).save(*args, **kwargs))
        return super().save(*args, **kwargs)

    @property
    def volume_values(self) -> list[Volume]:
        """The spec's volumes as values (the row keeps them as JSON objects)."""
        return [volume_from_dict(v) for v in self.volumes]

    @property
    def units(self) -> int:
        return self.gpu or self.cpu

    def ensure_sandbox_uid(self) -> int:
        """This notebook's uid, allocated now for a row made without one (bulk inserts)."""
        if self.sandbox_uid is None:
            allocate_sandbox_uid(self, lambda: self.save(update_fields=["sandbox_uid"]))
        return self.sandbox_uid


def allocate_sandbox_uid(notebook: Notebook, save, attempts: int = 20):
    """Give `notebook` the next free uid of the range and save it with `save`; a
    concurrent allocation of the same uid loses on the unique constraint and retries."""
    base, count = settings.NBCLOUD_SANDBOX_UID_BASE, settings.NBCLOUD_SANDBOX_UID_COUNT
    for _ in range(attempts):
        top = Notebook.objects.aggregate(top=models.Max("sandbox_uid"))["top"]
        candidate = base if top is None or top < base else top + 1
        if candidate >= base + count:
            raise ImproperlyConfigured(
                f"All {count} sandbox uids from NBCLOUD_SANDBOX_UID_BASE={base} are taken: "
                "raise NBCLOUD_SANDBOX_UID_COUNT"
            )
        notebook.sandbox_uid = candidate
        try:
            with transaction.atomic():
                return save()
        except IntegrityError:
            if not Notebook.objects.filter(sandbox_uid=candidate).exists():
                raise
    raise IntegrityError("could not allocate a sandbox uid: too many concurrent creations")


class NotebookEvent(models.Model):
    notebook = models.ForeignKey(Notebook, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.CharField(max_length=150, help_text="User, token or 'system'.")
    from_state = models.CharField(max_length=16, choices=State.choices, blank=True)
    to_state = models.CharField(max_length=16, choices=State.choices)
    code = models.CharField(max_length=32, choices=InfoCode.choices)
    message = models.TextField(blank=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.from_state or '-'} -> {self.to_state} ({self.code})"


class Backup(models.Model):
    """A workspace archive in the backups storage, complete and checksummed."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    notebook = models.ForeignKey(Notebook, on_delete=models.CASCADE, related_name="backups")
    created_at = models.DateTimeField(default=timezone.now)
    # Several rows may name one archive: a fork shares its source's archive,
    # which is deleted from the storage with the last row naming it.
    storage_name = models.CharField(max_length=255, db_index=True)
    size = models.BigIntegerField(help_text="Archive size in bytes.")
    sha256 = models.CharField(max_length=64)
    workspace_size = models.BigIntegerField(help_text="Bytes of files in the workspace.")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.notebook_id} @ {self.created_at:%Y-%m-%d %H:%M:%S}"


class NotebookGrant(models.Model):
    """A role on one notebook for one person, given by its owner (sharing).

    Grants are for people signed in to the platform: API tokens keep their
    own project, role and label selector.
    """

    notebook = models.ForeignKey(Notebook, on_delete=models.CASCADE, related_name="grants")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notebook_grants"
    )
    role = models.CharField(max_length=16, choices=[("read", "read"), ("operator", "operator")])
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["notebook", "user"], name="one_grant_per_person")
        ]

    def __str__(self) -> str:
        return f"{self.user} may {self.role} {self.notebook}"


class EditorLog(models.Model):
    """The last lines of a notebook's editor log, as its host last shipped them.

    The host's worker writes it (on start, while it runs, at stop); the API reads
    it, so logs can be read from any web process, whichever host ran the editor.
    """

    KEEP_LINES = 5000

    notebook = models.OneToOneField(
        Notebook, primary_key=True, on_delete=models.CASCADE, related_name="editor_log"
    )
    text = models.TextField(blank=True)
    updated_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"editor log of {self.notebook_id}"
