from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Tenancy: organizations, memberships, projects and API keys."""

    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import schema  # noqa: F401 - registers the bearer schemes with drf-spectacular
        from . import signals  # noqa: F401 - connects the key-cache invalidation (accounts.signals)
