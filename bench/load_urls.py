"""The platform's URLs plus the load test's baseline: a bare DRF endpoint.

`/bench/bare/` is what every API request pays before the platform's own
work: uvicorn, Django's middleware, DRF, the bearer token's lookup (the
platform's authentication classes) and a JSON answer.
"""

from django.urls import path
from rest_framework.response import Response
from rest_framework.views import APIView

from nbcloud.urls import handler404, handler500  # noqa: F401
from nbcloud.urls import urlpatterns as platform_urlpatterns


class BareView(APIView):
    schema = None

    def get(self, request):
        return Response({"ok": True})


urlpatterns = [path("bench/bare/", BareView.as_view()), *platform_urlpatterns]
