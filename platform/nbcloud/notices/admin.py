from django.contrib import admin

from .models import Delivery, NoticeTarget


@admin.register(NoticeTarget)
class NoticeTargetAdmin(admin.ModelAdmin):
    """Owners add targets (the API, the console): a webhook's secret is shown to them once."""

    list_display = ["name", "project", "type", "address", "url", "enabled"]
    list_filter = ["type", "enabled"]
    search_fields = ["name", "project__name", "address", "url"]
    fields = ["project", "name", "type", "address", "url", "kinds", "enabled", "created_at"]
    readonly_fields = ["project", "type", "created_at"]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ["created_at", "notice", "target", "state", "attempts", "response_status"]
    list_filter = ["state", "notice__kind"]
    search_fields = ["target__project__name", "target__name", "notice__subject"]
    list_select_related = ["notice__project", "target__project"]
    readonly_fields = [f.name for f in Delivery._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False
