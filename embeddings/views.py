"""The OpenAI-compatible ``/v1`` API: ``POST /v1/embeddings``, ``GET /v1/models[/{id}]``.

A request's path reads top to bottom in `EmbeddingsView.post`:
authenticate, validate, tokenize, admit, encode, meter, respond.
"""
from __future__ import annotations

import time

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.admission import RateLimitHeadersMixin, admission_reserve
from billing.services import usage_record_create
from config.errors import NotFoundError, PermissionDeniedError

from . import services
from .selectors import embedding_model_get, embedding_models_active
from .serializers import EmbeddingsRequestSerializer
from .serving.tokenization import OPENAI_TOKENIZER


def check_project_scope(request) -> None:
    """403 when the ``OpenAI-Project`` header / ``ai_project_id`` query, or the
    ``OpenAI-Organization`` header, names another project/organization than the key's."""
    key = request.auth
    for named in (request.headers.get("OpenAI-Project"), request.query_params.get("ai_project_id")):
        if named and named != key.project_public_id:
            raise PermissionDeniedError(
                f"The project '{named}' does not match the project of this API key.",
                code="mismatched_project")
    org = request.headers.get("OpenAI-Organization")
    if org and org != key.organization_public_id:
        raise PermissionDeniedError(
            f"The organization '{org}' does not match the organization of this API key.",
            code="mismatched_organization")


class EmbeddingsView(RateLimitHeadersMixin, APIView):
    """``POST /v1/embeddings``: OpenAI's embeddings endpoint."""

    @extend_schema(
        request=EmbeddingsRequestSerializer,
        responses={200: OpenApiTypes.OBJECT},
        summary="Create embeddings",
        description="OpenAI-compatible: returns one embedding per input, in input order.",
    )
    def post(self, request):
        # 1. Authenticate (DRF ran APIKeyAuthentication; request.auth is the resolved key).
        key = request.auth
        check_project_scope(request)

        # 2. Validate the body into a typed request.
        serializer = EmbeddingsRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        body = serializer.to_request()
        model = embedding_model_get(name=body.model)
        services.check_dimensions(model=model, dimensions=body.dimensions)
        service_tier = "default" if body.service_tier == "auto" else body.service_tier

        # 3. Tokenize: exact counts, per-input and per-request limits.
        tokenized = services.tokenize_inputs(request=body, model=model)

        # 4. Admit: reserve the exact token count against every applicable quota and rate limit
        #    at once (429 / 503 otherwise); the reservation also gives the x-ratelimit-* headers.
        request.reservation = admission_reserve(key=key, tokens=tokenized.total_tokens, service_tier=service_tier)
        with request.reservation:  # any exception in 5-6 refunds the reservation (and propagates)
            # 5. Encode: inline when small, else chunks on the workers (raises APIError 503/504/500).
            vectors = services.encode_inputs(model=model, token_ids=tokenized.token_ids, dimensions=body.dimensions,
                                             service_tier=service_tier, request_id=request.request_id)

            # 6. Meter: one record per successful request.
            latency_ms = int((time.perf_counter() - request.started_at) * 1000)
            usage_record_create(
                request_id=request.request_id,
                organization_id=key.organization_id,
                project_id=key.project_id,
                api_key_id=key.key_id,
                model_id=model.pk,
                input_count=len(tokenized.token_ids),
                prompt_tokens=tokenized.total_tokens,
                total_tokens=tokenized.total_tokens,
                user=body.user,
                service_tier=service_tier,
                latency_ms=latency_ms,
            )

        # 7. Respond.
        return Response({
            "object": "list",
            "data": services.embedding_data(vectors=vectors, encoding_format=body.encoding_format),
            "model": model.name,
            "usage": {"prompt_tokens": tokenized.total_tokens, "total_tokens": tokenized.total_tokens},
            "service_tier": service_tier,
        })


def model_object(model, model_id: str) -> dict:
    """OpenAI's model object, plus the embedding-specific ``dimensions``, ``max_input_tokens`` and
    ``token_ids``: the tokenizer whose ids an ``input`` of token ids is read as (``cl100k_base``,
    OpenAI's, decoded to text; or ``served``, the model's own)."""
    return {
        "id": model_id,
        "object": "model",
        "created": int(model.created_at.timestamp()),
        "owned_by": model.owned_by,
        "dimensions": model.dimensions,
        "max_input_tokens": model.max_input_tokens,
        "token_ids": OPENAI_TOKENIZER if model.token_ids == model.TokenIds.OPENAI else "served",
    }


_MODEL_LIST = inline_serializer("ModelList", fields={"object": serializers.CharField(),
                                                     "data": serializers.ListField()})


class ModelListView(APIView):
    """``GET /v1/models``: every active model, each alias listed as a model of its own."""

    @extend_schema(responses={200: _MODEL_LIST}, summary="List models")
    def get(self, request):
        data = [model_object(m, name) for m in embedding_models_active() for name in m.names]
        return Response({"object": "list", "data": data})


class ModelDetailView(APIView):
    """``GET /v1/models/{id}``: one model by name or alias; 404 ``model_not_found`` otherwise."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, summary="Retrieve a model")
    def get(self, request, model_id: str):
        try:
            model = embedding_model_get(name=model_id)
        except NotFoundError as exc:
            exc.param = None
            raise
        return Response(model_object(model, model_id))
