"""Receivers of notices on loopback, and the settings that let the platform reach them
(webhooks to loopback are refused unless an operator allows the network)."""

import ipaddress

import pytest

from support.receivers import SmtpServer, WebhookReceiver
from workers.runtimes.process import free_port


@pytest.fixture
def smtp_server():
    server = SmtpServer(free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def webhook_receiver():
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def loopback_allowed(settings):
    """An operator's NBCLOUD_WEBHOOK_ALLOWED_NETWORKS=127.0.0.0/8."""
    settings.NBCLOUD_WEBHOOK_ALLOWED_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.fixture
def mail_to(settings, smtp_server):
    """Email through the real SMTP server on loopback."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = smtp_server.port
    return smtp_server
