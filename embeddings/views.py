"""The OpenAI-compatible ``/v1`` API: ``POST /v1/embeddings``, ``GET /v1/models[/{id}]``.

`EmbeddingsView.post` validates, calls `embeddings.services.embeddings_create` (tokenize ->
admit -> encode -> meter) and renders.
"""
from __future__ import annotations

import dataclasses
from functools import partial

from drf_spectacular.utils import extend_schema
from rest_framework.exceptions import ParseError, UnsupportedMediaType
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import APIKeyAuthentication, KeyChanged, key_confirm
from limits.api import RateLimitHeadersMixin
from config.errors import NotFoundError, PermissionDeniedError
from config.logs import log_context_update
from config.metrics import embeddings_served, phase, phases_rerun
from config.schema import error_responses

from . import services
from .services import check_project, model_uri_resolve
from .selectors import embedding_model_get, embedding_models_active
from .serializers import (EmbeddingsRequest, EmbeddingsRequestSerializer, EmbeddingsResponseSerializer,
                          ModelListSerializer, ModelObjectSerializer)
from .serving.tokenization import OPENAI_TOKENIZER


def check_project_scope(request) -> None:
    """(Every ``/v1`` endpoint of a project key, as OpenAI checks these on every call.) 403 when the ``OpenAI-Project`` header / ``ai_project_id`` query, or the
    ``OpenAI-Organization`` header, names another project/organization than the key's.

    Every value counts: ``?ai_project_id=<other>&ai_project_id=<own>`` is refused (reading only
    the last one, as ``QueryDict.get`` does, would let the other pass); a repeated header reaches
    us joined by commas, which never equals one public id, so it is refused too."""
    key = request.auth
    for named in (request.headers.get("OpenAI-Project"), *request.query_params.getlist("ai_project_id")):
        check_project(key, named)
    org = request.headers.get("OpenAI-Organization")
    if org and org != key.organization_public_id:
        raise PermissionDeniedError(
            f"The organization '{org}' does not match the organization of this API key.",
            code="mismatched_organization")


def embeddings_request(request) -> EmbeddingsRequest:
    """The validated request: the project/organization headers against the key (403), then the
    body through `EmbeddingsRequestSerializer` (400 in the envelope), its ``model`` resolved from a
    model URI (`model_uri_resolve`)."""
    check_project_scope(request)
    serializer = EmbeddingsRequestSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    body = serializer.to_request()
    model = model_uri_resolve(request.auth, body.model)
    return body if model == body.model else dataclasses.replace(body, model=model)


class EmbeddingsView(RateLimitHeadersMixin, APIView):
    """``POST /v1/embeddings``: OpenAI's embeddings endpoint (DRF authenticated the key first).

    The key may come from the process's memory (`APIKeyAuthentication` with ``remember``), confirmed by
    the admission round trip. Whatever stops a request before its admission confirmed the key (the
    confirmation failing, or a refusal: 400, 403, 404) makes the view authenticate the request
    with a round trip first (`accounts.authentication.key_confirm`): its 401 or 429 is the answer
    then; a key that changed but is still valid has the request served again, once, from the
    start, as the key is now (a body that could not be parsed excepted: refused whatever the key);
    an unchanged key has admission run again (the confirmation failing: its cache entry had
    expired) or the refusal stand."""

    def get_authenticators(self):
        return [APIKeyAuthentication(remember=True)]

    def perform_authentication(self, request):
        with phase("auth"):
            super().perform_authentication(request)

    @extend_schema(
        request=EmbeddingsRequestSerializer,
        responses={200: EmbeddingsResponseSerializer, **error_responses(400, 401, 403, 404, 413, 429, 500, 503, 504)},
        summary="Create embeddings", operation_id="createEmbedding",
        description="OpenAI-compatible: returns one embedding per input, in input order.",
    )
    def post(self, request):
        try:
            return self._post(request)
        except KeyChanged:
            pass
        except Exception as exc:
            if getattr(request, "key_confirmation", None) is None or getattr(request, "reservation", None):
                raise  # a key authenticated with a round trip, or confirmed by its admission
            with phase("auth"):
                changed = key_confirm(request)  # raises the 401/429 the request gets instead
            if not changed or isinstance(exc, (ParseError, UnsupportedMediaType)):
                raise  # (a body that could not be read is refused whatever the key)
        phases_rerun()
        return self._post(request)

    @staticmethod
    def _reconfirm(request) -> None:
        """Admission could not confirm the key taken from memory: authenticate it with a round trip
        (its 401/429 raised), and have the request served again if the key changed."""
        if key_confirm(request):
            raise KeyChanged()

    def _post(self, request):
        with phase("validation"):
            body = embeddings_request(request)
        log_context_update(model=body.model)
        result = services.embeddings_create(key=request.auth, body=body, request_id=request.request_id,
                                            started_at=request.started_at,
                                            on_admitted=partial(setattr, request, "reservation"),
                                            key_confirmation=getattr(request, "key_confirmation", None),
                                            key_reconfirm=partial(self._reconfirm, request))
        embeddings_served(model=result.model.name, service_tier=result.service_tier, inputs=len(result.vectors),
                          tokens=result.total_tokens)
        return Response(services.embeddings_response(result=result, encoding_format=body.encoding_format))


def model_object(model, model_id: str) -> dict:
    """OpenAI's model object, plus the embedding-specific ``dimensions``, ``max_input_tokens`` and
    ``token_ids``: the tokenizer whose ids an ``input`` of token ids is read as (``cl100k_base``,
    OpenAI's, decoded to text; or ``served``, the model's own); ``variant_of``: the model a prompt
    variant shares (else null) and ``prompt``: the text put before every input (else null)."""
    return {
        "id": model_id,
        "object": "model",
        "created": int(model.created_at.timestamp()),
        "owned_by": model.owned_by,
        "dimensions": model.dimensions,
        "max_input_tokens": model.max_input_tokens,
        "token_ids": OPENAI_TOKENIZER if model.token_ids == model.TokenIds.OPENAI else "served",
        "variant_of": model.variant_of.name if model.variant_of_id else None,
        "prompt": model.prompt or None,
    }


class ModelListView(APIView):
    """``GET /v1/models``: every active model the key may use (its project's and its own model
    allowlists), each alias listed as a model of its own."""

    @extend_schema(responses={200: ModelListSerializer, **error_responses(401, 403)}, summary="List models",
                   operation_id="listModels",
                   description="The models this key may use (see the project's and the key's allowed models).")
    def get(self, request):
        check_project_scope(request)
        data = [model_object(m, name) for m in embedding_models_active()
                if request.auth.model_refused_by(m.names) is None for name in m.names]
        return Response({"object": "list", "data": data})


class ModelDetailView(APIView):
    """``GET /v1/models/{id}``: one model by name or alias; 404 ``model_not_found`` otherwise, also
    for a model the key may not use (as OpenAI answers: "does not exist or you do not have access")."""

    @extend_schema(responses={200: ModelObjectSerializer, **error_responses(401, 403, 404)},
                   summary="Retrieve a model", operation_id="retrieveModel")
    def get(self, request, model_id: str):
        check_project_scope(request)
        try:
            model = embedding_model_get(name=model_id)
            if request.auth.model_refused_by(model.names) is not None:
                raise NotFoundError(f"The model '{model_id}' does not exist or you do not have access to it.",
                                    code="model_not_found")
        except NotFoundError as exc:
            exc.param = None
            raise
        return Response(model_object(model, model_id))
