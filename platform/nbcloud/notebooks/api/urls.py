from rest_framework.routers import SimpleRouter

from .views import NotebookViewSet

router = SimpleRouter()
router.register("notebooks", NotebookViewSet, basename="notebook")
urlpatterns = router.urls
