from django.apps import AppConfig


class EmbeddingsConfig(AppConfig):
    """The model registry, request validation, tokenization, the engine and the /v1 API."""

    name = "embeddings"
    default_auto_field = "django.db.models.BigAutoField"
