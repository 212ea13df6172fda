from django.apps import AppConfig


class BillingConfig(AppConfig):
    """Usage metering (one UsageRecord per request), rollups, prices, statements."""

    name = "billing"
    default_auto_field = "django.db.models.BigAutoField"
