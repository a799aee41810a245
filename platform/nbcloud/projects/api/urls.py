from django.urls import include, path
from rest_framework.routers import SimpleRouter

from .datastores import DatastoreViewSet
from .tokens import ApiTokenViewSet
from .views import ProjectView, QuotaView

router = SimpleRouter()
router.register("tokens", ApiTokenViewSet, basename="token")
router.register("datastores", DatastoreViewSet, basename="datastore")

urlpatterns = [
    path("", ProjectView.as_view(), name="project"),
    path("quota/", QuotaView.as_view(), name="project-quota"),
    path(
        "datastores/<str:alias>/containers/<str:container>/objects/",
        include("nbcloud.projects.api.data"),
    ),
    *router.urls,
]
