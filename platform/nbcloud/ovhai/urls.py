"""OVHcloud AI's paths for notebooks, capabilities, tokens and /me (no trailing slash, as OVH).

Mounted at settings.NBCLOUD_OVHAI_PREFIX (default `ovhai/`), so that
`ovhai.AuthenticatedClient(base_url="https://nbcloud.example/ovhai", token=...)` works.
"""

from django.urls import path, re_path

from . import views

notebook = views.NotebookView.as_view
token = views.TokenView.as_view
NOTEBOOK = "v1/notebook/<str:pk>"
BACKUP = f"{NOTEBOOK}/backup/<str:backup_id>"

urlpatterns = [
    path("v1/me", views.MeView.as_view()),
    path("v1/notebook", notebook({"get": "list", "post": "create"})),
    path("v1/notebook/command", views.CommandView.as_view()),
    path(
        NOTEBOOK,
        notebook({"get": "retrieve", "put": "partial_update", "delete": "destroy"}),
    ),
    path(f"{NOTEBOOK}/start", notebook({"put": "start"})),
    path(f"{NOTEBOOK}/stop", notebook({"put": "stop"})),
    path(f"{NOTEBOOK}/label", notebook({"put": "label"})),
    path(f"{NOTEBOOK}/datasync", notebook({"post": "datasync"})),
    path(f"{NOTEBOOK}/exec", notebook({"get": "exec_command"})),
    path(f"{NOTEBOOK}/backup", notebook({"get": "backups"})),
    path(BACKUP, notebook({"get": "backup"})),
    path(f"{BACKUP}/fork", notebook({"post": "fork"})),
    path("v1/capabilities/notebook/framework", views.FrameworkCapabilitiesView.as_view()),
    path("v1/capabilities/notebook/framework/<str:id>", views.FrameworkCapabilitiesView.as_view()),
    path("v1/capabilities/notebook/editor", views.EditorCapabilitiesView.as_view()),
    path("v1/capabilities/notebook/editor/<str:id>", views.EditorCapabilitiesView.as_view()),
    path("v1/capabilities/flavor", views.FlavorCapabilitiesView.as_view()),
    path("v1/capabilities/flavor/<str:id>", views.FlavorCapabilitiesView.as_view()),
    path("v1/capabilities/quota", views.QuotaCapabilityView.as_view()),
    path("v1/token", token({"get": "list", "post": "create"})),
    path("v1/token/<str:pk>", token({"get": "retrieve", "delete": "destroy"})),
    path("v1/token/<str:pk>/renew", token({"post": "renew"})),
    re_path(r"^.*$", views.CatchAllView.as_view()),
]
