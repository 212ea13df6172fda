"""Reads for the model registry."""
from __future__ import annotations

import threading
import time

from config.errors import NotFoundError

from .models import EmbeddingModel

# Seconds the active-model list is kept per process; registry edits show within this time.
MODELS_CACHE_SECONDS = 5.0

_cache: dict = {"at": 0.0, "models": []}
_lock = threading.Lock()


def embedding_models_active() -> list[EmbeddingModel]:
    """Active models, ordered by name, each with its ``variant_of`` loaded (the prompt of a variant is
    its base's; cached per process for ``MODELS_CACHE_SECONDS``)."""
    now = time.monotonic()
    if now - _cache["at"] > MODELS_CACHE_SECONDS:
        with _lock:
            if now - _cache["at"] > MODELS_CACHE_SECONDS:
                _cache["models"] = list(EmbeddingModel.objects.filter(is_active=True).select_related("variant_of")
                                        .order_by("name"))
                _cache["at"] = time.monotonic()
    return _cache["models"]


def embedding_models_cache_clear() -> None:
    """Forget this process's cached model list (after a registry write)."""
    _cache["at"] = 0.0


def embedding_model_get(*, name: str) -> EmbeddingModel:
    """The active model whose name or alias is ``name``.

    Raises `NotFoundError` (404 ``model_not_found``, param ``model``) otherwise, as
    OpenAI does (Infinity answers 400 here, which clients misread).
    """
    for model in embedding_models_active():
        if name == model.name or name in model.aliases:
            return model
    raise NotFoundError(f"The model '{name}' does not exist or you do not have access to it.",
                        param="model", code="model_not_found")
