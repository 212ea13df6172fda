from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """Server-rendered pages for tenants."""

    name = "console"
