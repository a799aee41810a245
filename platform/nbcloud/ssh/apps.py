from django.apps import AppConfig


class SshConfig(AppConfig):
    name = "nbcloud.ssh"
    label = "ssh"
    verbose_name = "SSH access"
