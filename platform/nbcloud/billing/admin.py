from django.contrib import admin
from django.db.models import Sum

from .models import BillableInterval, Budget, Price, UsageRecord
from .money import from_sum, money_sum


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    list_display = ["flavor", "unit_price", "currency", "valid_from"]
    list_filter = ["flavor", "currency"]


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ["project", "monthly_amount", "currency", "warning_percent", "stop_running"]
    search_fields = ["project__name"]


class UsageRecordInline(admin.TabularInline):
    model = UsageRecord
    fields = ["minute", "starts_at", "units", "amount", "currency"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0


@admin.register(BillableInterval)
class BillableIntervalAdmin(admin.ModelAdmin):
    list_display = [
        "notebook",
        "project",
        "flavor",
        "units",
        "unit_price",
        "currency",
        "started_at",
        "ended_at",
        "cost",
    ]
    list_filter = ["project", "flavor", "currency"]
    search_fields = ["notebook__name", "notebook__id", "project__name"]
    readonly_fields = [f.name for f in BillableInterval._meta.fields]
    inlines = [UsageRecordInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(total=money_sum("records__amount"))

    @admin.display(description="cost", ordering="total")
    def cost(self, interval) -> str:
        return f"{from_sum(interval.total)} {interval.currency}"

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    """Usage per project and notebook: filter, then read the total at the top."""

    list_display = [
        "project",
        "notebook",
        "flavor",
        "minute",
        "starts_at",
        "units",
        "amount",
        "currency",
    ]
    list_filter = ["project", "flavor", "currency", ("starts_at", admin.DateFieldListFilter)]
    search_fields = ["notebook__name", "project__name"]
    readonly_fields = [f.name for f in UsageRecord._meta.fields]
    date_hierarchy = "starts_at"

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        try:
            queryset = response.context_data["cl"].queryset
        except (AttributeError, KeyError):
            return response
        # order_by(): the changelist's ordering would split the groups, one per record.
        totals = (
            queryset.order_by().values("currency").annotate(total=money_sum(), minutes=Sum("units"))
        )
        self.message_user(
            request,
            "Total of the selection: "
            + (
                "; ".join(
                    f"{from_sum(t['total'])} {t['currency']} ({t['minutes']} unit-minutes)"
                    for t in totals
                )
                or "nothing"
            ),
        )
        return response

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
