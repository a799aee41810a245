"""Exact sums of money on every database.

SQLite has no decimal type: a DecimalField is stored as a REAL and SUM() adds
floats (91 minutes at 0.0292 come back as 2.65719999999999). An amount has at
most MONEY["decimal_places"] decimals, so each one is a whole number of
micro-units: summing those as integers is exact on SQLite and PostgreSQL alike.
"""

from decimal import Decimal

from django.db.models import BigIntegerField, F, Sum
from django.db.models.functions import Cast, Round

from .models import MONEY

PLACES = MONEY["decimal_places"]
QUANTUM = Decimal(1).scaleb(-PLACES)


def money_sum(field: str = "amount") -> Sum:
    """Aggregate: the sum of a money field, in micro-units (read it with `from_sum`)."""
    return Sum(Cast(Round(F(field) * 10**PLACES), BigIntegerField()))


def from_sum(total) -> Decimal:
    """A `money_sum` result as a Decimal amount (0 for an empty sum)."""
    return Decimal(total or 0).scaleb(-PLACES).quantize(QUANTUM)
