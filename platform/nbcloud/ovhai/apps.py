from django.apps import AppConfig


class OvhaiConfig(AppConfig):
    name = "nbcloud.ovhai"
    verbose_name = "OVHcloud AI API"
