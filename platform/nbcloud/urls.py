from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from nbcloud.monitoring.views import metrics as metrics_view

project_urls = [
    path("", include("nbcloud.notebooks.api.urls")),
    path("", include("nbcloud.projects.api.urls")),
    path("", include("nbcloud.billing.api.urls")),
    path("", include("nbcloud.notices.api.urls")),
]

api_v1 = [
    path("projects/<str:project>/", include(project_urls)),
    path("capabilities/", include("nbcloud.catalog.api.urls")),
    path("", include("nbcloud.ssh.api.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("gateway/", include("nbcloud.gateway.urls")),
    path("api/v1/", include(api_v1)),
    path(f"{settings.NBCLOUD_OVHAI_PREFIX}/", include("nbcloud.ovhai.urls")),
    path("metrics", metrics_view, name="metrics"),
    # The console last: its pages are at / and /accounts/.
    path("", include("nbcloud.console.urls")),
]


def api_aware_404(request, exception=None):
    """Unknown URLs under /api/ answer the API's error shape, not an HTML page."""
    from django.http import JsonResponse
    from django.views.defaults import page_not_found

    if request.path.startswith("/api/"):
        return JsonResponse(
            {"code": "not_found", "message": f"No API endpoint at {request.path}."}, status=404
        )
    return page_not_found(request, exception)


def api_aware_500(request):
    """A crash under /api/ still answers the API's error shape; a database that cannot
    be reached (down, restarting, failing over) is a 503 with Retry-After, anywhere."""
    import sys

    from django.db import InterfaceError, OperationalError
    from django.http import JsonResponse
    from django.views.defaults import server_error

    if isinstance(sys.exc_info()[1], OperationalError | InterfaceError):
        answer = JsonResponse(
            {
                "code": "unavailable",
                "message": "The platform's database cannot be reached just now; running "
                "notebooks are not affected. Try again in a few seconds.",
            },
            status=503,
        )
        answer["Retry-After"] = str(DATABASE_RETRY_AFTER)
        return answer
    if request.path.startswith("/api/"):
        return JsonResponse(
            {"code": "server_error", "message": "Internal error; the operator has the details."},
            status=500,
        )
    return server_error(request)


DATABASE_RETRY_AFTER = 5  # seconds
handler404 = api_aware_404
handler500 = api_aware_500
