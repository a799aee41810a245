from django.urls import path

from .views import ProjectView, QuotaView

urlpatterns = [
    path("", ProjectView.as_view(), name="project"),
    path("quota/", QuotaView.as_view(), name="project-quota"),
]
