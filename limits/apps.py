from django.apps import AppConfig


class LimitsConfig(AppConfig):
    """Quotas, rate limits and admission."""

    name = "limits"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import signals  # noqa: F401 - every change to a limit goes to the audit log
