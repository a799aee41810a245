import base64
import binascii
import json
import uuid
from datetime import datetime

from django.db.models import Q
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param


class Pagination(PageNumberPagination):
    page_size_query_param = "size"
    max_page_size = 1000


class KeysetPagination(Pagination):
    """Page numbers, as everywhere, and `after`/`before` cursors that need no OFFSET.

    Every page's `next` and `previous` links carry a cursor (the created_at and id of
    the page's last or first item), so a client that follows them pays the same for
    the last page of 100,000 notebooks as for the first; `page=N` still works, at
    the cost of an OFFSET. Items come in the order (created_at, id): unique, and an
    index of the list's table (`notebooks_by_project`).
    """

    ordering = ("created_at", "id")

    def paginate_queryset(self, queryset, request, view=None):
        self.request = request
        after, before = request.query_params.get("after"), request.query_params.get("before")
        if after is not None and before is not None:
            raise ValidationError({"after": "give 'after' or 'before', not both"})
        if after is None and before is None:
            rows = super().paginate_queryset(queryset.order_by(*self.ordering), request, view)
            self.count = self.page.paginator.count
            self.more_after, self.more_before = self.page.has_next(), self.page.has_previous()
            self.rows = list(rows)
            return self.rows
        size = self.get_page_size(request)
        at, pk = decode_cursor("after" if after is not None else "before", after or before)
        if after is not None:
            window = queryset.filter(created_at__gte=at).filter(
                Q(created_at__gt=at) | Q(created_at=at, pk__gt=pk)
            )
            rows = list(window.order_by(*self.ordering)[: size + 1])
        else:
            window = queryset.filter(created_at__lte=at).filter(
                Q(created_at__lt=at) | Q(created_at=at, pk__lt=pk)
            )
            rows = list(window.order_by(*(f"-{f}" for f in self.ordering))[: size + 1])
        more, rows = len(rows) > size, rows[:size]
        if before is not None:
            rows.reverse()
        self.count = queryset.count()
        # Past a cursor there is always something before it (the item it names), and
        # before a cursor something after it.
        self.more_after, self.more_before = (more, True) if after is not None else (True, more)
        self.rows = rows
        return rows

    def get_paginated_response(self, data):
        return Response(
            {
                "count": self.count,
                "next": self._link("after", -1) if self.more_after else None,
                "previous": self._link("before", 0) if self.more_before else None,
                "results": data,
            }
        )

    def get_schema_operation_parameters(self, view):
        if getattr(view, "action", "list") != "list":
            return super().get_schema_operation_parameters(view)
        cursor = {
            "required": False,
            "in": "query",
            "schema": {"type": "string"},
        }
        return [
            *super().get_schema_operation_parameters(view),
            {
                **cursor,
                "name": "after",
                "description": "The items after this cursor (from a page's `next` link).",
            },
            {
                **cursor,
                "name": "before",
                "description": "The items before this cursor (from a page's `previous` link).",
            },
        ]

    def _link(self, direction: str, index: int) -> str | None:
        if not self.rows:
            return None
        row = self.rows[index]
        url = self.request.build_absolute_uri()
        for name in ("page", "after", "before"):
            url = remove_query_param(url, name)
        return replace_query_param(url, direction, encode_cursor(row.created_at, row.pk))


def encode_cursor(at: datetime, pk: uuid.UUID) -> str:
    raw = json.dumps([at.isoformat(), str(pk)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(name: str, token: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        at, pk = json.loads(raw)
        at, pk = datetime.fromisoformat(at), uuid.UUID(pk)
        if at.tzinfo is None:
            raise ValueError("no time zone")
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ValidationError(
            {
                name: f"not a cursor of this list ({exc}): use the 'next' or 'previous' link "
                "of a page as it is"
            }
        ) from None
    return at, pk
