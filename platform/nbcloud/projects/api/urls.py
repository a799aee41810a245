from django.urls import path

from .views import QuotaView

urlpatterns = [path("quota/", QuotaView.as_view(), name="project-quota")]
