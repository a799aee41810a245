from django.urls import path

from .views import CapabilityView

urlpatterns = [
    path(f"{kind}/", CapabilityView.as_view(kind=kind), name=f"capabilities-{kind}")
    for kind in ("frameworks", "editors", "flavors", "regions")
]
