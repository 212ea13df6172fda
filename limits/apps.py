from django.apps import AppConfig


class LimitsConfig(AppConfig):
    """Quotas, rate limits and admission."""

    name = "limits"
    default_auto_field = "django.db.models.BigAutoField"
