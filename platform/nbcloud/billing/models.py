"""Prices, billable intervals and per-minute usage records.

An interval runs from the moment capacity is reserved for a notebook to the
moment it is released. Minute k of an interval covers [start + 60k s,
start + 60(k+1) s) and is billed in full once it has commenced; each billed
minute is one UsageRecord, unique on (interval, minute), so writing a minute
twice is impossible. Money is Decimal, never float.
"""

from decimal import Decimal

from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from nbcloud.notebooks.models import Notebook
from nbcloud.projects.models import Project

MONEY = {"max_digits": 18, "decimal_places": 6}


class Price(models.Model):
    """The price of one unit (one GPU, or one vCPU) of a flavor for one minute."""

    flavor = models.CharField(max_length=64, db_index=True)
    unit_price = models.DecimalField(**MONEY, validators=[MinValueValidator(Decimal(0))])
    currency = models.CharField(max_length=3, default="EUR")
    valid_from = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["flavor", "-valid_from"]

    def __str__(self) -> str:
        return f"{self.flavor}: {self.unit_price} {self.currency}/unit/min from {self.valid_from:%Y-%m-%d}"


class BillableInterval(models.Model):
    notebook = models.ForeignKey(Notebook, on_delete=models.PROTECT, related_name="intervals")
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="intervals")
    flavor = models.CharField(max_length=64)
    units = models.PositiveSmallIntegerField()
    unit_price = models.DecimalField(**MONEY, help_text="Fixed when the interval opens.")
    currency = models.CharField(max_length=3)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [
            models.Index(
                fields=["started_at"],
                name="open_intervals",
                condition=models.Q(ended_at__isnull=True),
            )
        ]

    def __str__(self) -> str:
        return f"{self.notebook_id} {self.started_at:%Y-%m-%d %H:%M} → {self.ended_at or 'open'}"

    @property
    def minute_amount(self) -> Decimal:
        return self.unit_price * self.units


class UsageRecord(models.Model):
    """One billed minute. Written in bulk by the tick, never changed; taken back
    only when its interval is closed at a time before the minute began (a lost
    host's last heartbeat): that minute never commenced.

    Records derive from their interval by construction, so the foreign keys
    carry no database constraint (a per-row trigger each), and the indexes
    are only those queries use: the tick's write speed is the goal here.
    """

    interval = models.ForeignKey(
        BillableInterval,
        on_delete=models.CASCADE,
        related_name="records",
        db_constraint=False,
        db_index=False,  # the unique (interval, minute) index serves
    )
    minute = models.PositiveIntegerField()
    # Denormalised so usage queries need no join.
    project = models.ForeignKey(
        Project, on_delete=models.PROTECT, related_name="+", db_constraint=False, db_index=False
    )
    notebook = models.ForeignKey(
        Notebook, on_delete=models.PROTECT, related_name="+", db_constraint=False, db_index=False
    )
    flavor = models.CharField(max_length=64)
    units = models.PositiveSmallIntegerField()
    amount = models.DecimalField(**MONEY)
    currency = models.CharField(max_length=3)
    starts_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["interval", "minute"], name="one_record_per_minute")
        ]
        indexes = [
            models.Index(fields=["project", "starts_at"], name="usage_by_project"),
            models.Index(fields=["notebook", "starts_at"], name="usage_by_notebook"),
        ]

    def __str__(self) -> str:
        return f"minute {self.minute} of {self.interval_id}: {self.amount} {self.currency}"


class Budget(models.Model):
    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="budget")
    monthly_amount = models.DecimalField(**MONEY, validators=[MinValueValidator(Decimal(0))])
    currency = models.CharField(max_length=3, default="EUR")
    warning_percent = models.PositiveSmallIntegerField(default=80)
    stop_running = models.BooleanField(
        default=False,
        help_text="When the budget is reached, stop running notebooks (workspaces are saved).",
    )

    def __str__(self) -> str:
        return f"{self.project}: {self.monthly_amount} {self.currency}/month"
