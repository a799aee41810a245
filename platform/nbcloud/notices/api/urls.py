from rest_framework.routers import SimpleRouter

from .views import DeliveryViewSet, NoticeTargetViewSet

router = SimpleRouter()
router.register("notice-targets", NoticeTargetViewSet, basename="notice-target")
router.register("notice-deliveries", DeliveryViewSet, basename="notice-delivery")

urlpatterns = router.urls
