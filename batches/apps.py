from django.apps import AppConfig


class BatchesConfig(AppConfig):
    """The Batch API: ``/v1/files`` and ``/v1/batches`` (OpenAI's shapes) for ``/v1/embeddings``."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "batches"
