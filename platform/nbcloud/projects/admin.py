from django.contrib import admin

from .models import ApiToken, Membership, Project


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "gpu_quota", "created_at"]
    search_fields = ["name"]
    inlines = [MembershipInline]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are stored hashed: the admin shows a prefix, never the value."""

    list_display = [
        "name",
        "project",
        "user",
        "role",
        "label_selector",
        "key_prefix",
        "created_at",
        "expires_at",
        "last_used_at",
    ]
    list_filter = ["role", "project"]
    search_fields = ["name", "project__name", "user__username", "key_prefix", "label_selector"]
    readonly_fields = ["key_prefix", "created_at", "last_used_at"]
    fields = ["name", "project", "user", "role", "label_selector", "expires_at", *readonly_fields]

    def has_add_permission(self, request) -> bool:
        # A token's value must be shown once to whoever creates it: use the
        # createapitoken command or the API (POST /api/v1/projects/{p}/tokens/).
        return False
