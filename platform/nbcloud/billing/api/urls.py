from django.urls import path

from .views import NotebookUsageView, UsageView

urlpatterns = [
    path("usage/", UsageView.as_view(), name="project-usage"),
    path("notebooks/<uuid:pk>/usage/", NotebookUsageView.as_view(), name="notebook-usage"),
]
