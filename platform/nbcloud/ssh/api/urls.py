from rest_framework.routers import SimpleRouter

from .views import SshKeyViewSet

router = SimpleRouter()
router.register("ssh-keys", SshKeyViewSet, basename="ssh-key")

urlpatterns = router.urls
