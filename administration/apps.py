from django.apps import AppConfig


class AdministrationConfig(AppConfig):
    """OpenAI's Admin API (``/v1/organization/projects...``, ``/v1/organization/audit_logs``) for admin keys."""

    name = "administration"
    default_auto_field = "django.db.models.BigAutoField"
