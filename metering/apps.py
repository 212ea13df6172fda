from django.apps import AppConfig


class MeteringConfig(AppConfig):
    """Usage records: one insert-only row per successful request."""

    name = "metering"
    default_auto_field = "django.db.models.BigAutoField"
