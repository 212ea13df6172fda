from django.apps import AppConfig


class EmbeddingsConfig(AppConfig):
    """The model registry, request validation, tokenization, the engine and the /v1 API."""

    name = "embeddings"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from functools import partial

        from config.metrics import phase_add

        from .serving import batching

        # An inline request's wait in this process's micro-batcher is its "queue_wait" phase.
        batching.observe_wait = partial(phase_add, "queue_wait")
