from django.contrib import admin, messages

from . import services
from .models import Backup, Notebook, NotebookEvent, NotebookGrant


class NotebookEventInline(admin.TabularInline):
    model = NotebookEvent
    extra = 0
    can_delete = False
    fields = ["at", "actor", "from_state", "to_state", "code", "message"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class BackupInline(admin.TabularInline):
    model = Backup
    extra = 0
    can_delete = False
    fields = ["created_at", "size", "workspace_size", "sha256"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class NotebookGrantInline(admin.TabularInline):
    model = NotebookGrant
    fk_name = "notebook"
    extra = 0
    fields = ["user", "role", "granted_by", "created_at"]
    readonly_fields = ["granted_by", "created_at"]
    autocomplete_fields = ["user"]


def _run_action(modeladmin, request, queryset, func, verb: str) -> None:
    done = 0
    for notebook in queryset:
        try:
            func(notebook, actor=f"{request.user.username} (admin)")
            done += 1
        except services.InvalidState as exc:
            modeladmin.message_user(request, str(exc), messages.WARNING)
    if done:
        modeladmin.message_user(request, f"{verb} {done} notebook(s).", messages.SUCCESS)


@admin.action(description="Start selected notebooks")
def start_notebooks(modeladmin, request, queryset):
    _run_action(modeladmin, request, queryset, services.start, "Started")


@admin.action(description="Stop selected notebooks (workspace saved)")
def stop_notebooks(modeladmin, request, queryset):
    _run_action(modeladmin, request, queryset, services.stop, "Stopping")


@admin.action(description="Delete selected notebooks")
def delete_notebooks(modeladmin, request, queryset):
    _run_action(modeladmin, request, queryset, services.delete, "Deleting")


@admin.register(Notebook)
class NotebookAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "project",
        "state",
        "info_code",
        "framework_id",
        "editor_id",
        "gpu",
        "cpu",
        "region",
        "host",
        "unsecure_http",
        "labels",
        "created_at",
    ]
    list_filter = [
        "state",
        "region",
        "framework_id",
        "editor_id",
        "unsecure_http",
        "host",
        "project",
    ]
    search_fields = ["id", "name", "project__name", "labels"]
    actions = [start_notebooks, stop_notebooks, delete_notebooks]
    inlines = [NotebookEventInline, BackupInline, NotebookGrantInline]
    exclude = ["editor_secret"]
    readonly_fields = [
        f.name for f in Notebook._meta.fields if f.name not in ("labels", "editor_secret")
    ]

    def has_add_permission(self, request) -> bool:
        return False  # created through the API, which validates the spec

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # the delete action goes through the lifecycle
