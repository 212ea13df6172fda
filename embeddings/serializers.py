"""Validation of the ``POST /v1/embeddings`` body into a typed request.

Shape rules only (types, emptiness, counts); everything that needs the model
(token limits, vocabulary, ``dimensions`` support) is checked in `services`.
Rules follow the OpenAI embeddings API reference.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from drf_spectacular.drainage import set_override
from rest_framework import serializers

from config.errors import InvalidRequestError

# OpenAI: "The input must not exceed the max input tokens for the model (8192 tokens for
# all embedding models), cannot be an empty string, and any array must be 2048
# dimensions or less."
MAX_INPUTS = 2048
MAX_USER_LENGTH = 256  # chars; the end-user id stored with the usage record

ENCODING_FORMATS = ("float", "base64")
SERVICE_TIERS = ("auto", "default", "flex")


@dataclass(frozen=True)
class EmbeddingsRequest:
    """The validated body of ``POST /v1/embeddings``.

    ``input`` is always a list: of strings when ``input_kind == "text"``, else of
    token-id lists (``"tokens"``). ``dimensions`` is ``None`` when not asked for.
    """

    model: str
    input: list
    input_kind: str
    encoding_format: str
    dimensions: int | None
    user: str
    service_tier: str


def _invalid_input(message: str, code: str = "invalid_value") -> InvalidRequestError:
    return InvalidRequestError(message, param="input", code=code)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def normalize_input(value) -> tuple[list, str]:
    """Turn any of OpenAI's four ``input`` forms into ``(list, kind)``.

    Forms: a string; an array of strings; an array of token ids; an array of
    token-id arrays. Raises `InvalidRequestError` (400, param ``input``) for an
    empty string/array/token array, a mixed array, a wrong type, or more than
    2048 inputs (OpenAI's limit).
    """
    if isinstance(value, str):
        if value == "":
            raise _invalid_input("'input' cannot be an empty string.")
        return [value], "text"
    if not isinstance(value, list):
        raise _invalid_input(
            "'input' must be a string, an array of strings, an array of token ids, "
            "or an array of token-id arrays.", code="invalid_type")
    if not value:
        raise _invalid_input("'input' cannot be an empty array.")
    first = value[0]
    if isinstance(first, str):
        kind = "text"
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise _invalid_input(f"'input[{i}]' must be a string, like the other items.", code="invalid_type")
            if item == "":
                raise _invalid_input(f"'input[{i}]' cannot be an empty string.")
        items = value
    elif _is_int(first):
        for i, item in enumerate(value):
            if not _is_int(item):
                raise _invalid_input(f"'input[{i}]' must be an integer token id.", code="invalid_type")
        return [value], "tokens"
    elif isinstance(first, list):
        kind = "tokens"
        for i, item in enumerate(value):
            if not isinstance(item, list):
                raise _invalid_input(f"'input[{i}]' must be an array of token ids.", code="invalid_type")
            if not item:
                raise _invalid_input(f"'input[{i}]' cannot be an empty token array.")
            if not all(_is_int(t) for t in item):
                raise _invalid_input(f"'input[{i}]' must contain only integer token ids.", code="invalid_type")
        items = value
    else:
        raise _invalid_input(
            "'input' must be a string, an array of strings, an array of token ids, "
            "or an array of token-id arrays.", code="invalid_type")
    if len(items) > MAX_INPUTS:
        raise _invalid_input(
            f"Too many inputs: {len(items)}. The maximum number of inputs per request is {MAX_INPUTS}.",
            code="too_many_inputs")
    return items, kind


class RawJSONField(serializers.JSONField):
    """A JSON value taken as parsed, without DRF's re-serialization check.

    (DRF's `JSONField` calls ``json.dumps`` on the value to validate it, which costs
    tens of ms on a 300,000-token input; the body came from a JSON parser, so it is
    JSON already.) Types are checked by the serializer's ``validate_<field>``; ``schema`` is the
    field's OpenAPI schema (what those checks accept).
    """

    def __init__(self, *, schema: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        if schema is not None:
            set_override(self, "field", schema)

    def to_internal_value(self, data):
        return data

    def __deepcopy__(self, memo):
        """DRF's `Field.__deepcopy__` (a serializer copies its declared fields for each instance: each
        request) with ``schema`` passed as it is, as DRF passes ``validators`` and ``regex``: it is a
        constant nested dict, ~40% of the request serializer's instantiation on 2 cores. The field
        copied is not changed (declared fields are shared by concurrent requests)."""
        kwargs = {key: value if key in ("schema", "validators", "regex") else copy.deepcopy(value, memo)
                  for key, value in self._kwargs.items()}
        return self.__class__(*copy.deepcopy(self._args, memo), **kwargs)


_TOKEN_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}


class EmbeddingsRequestSerializer(serializers.Serializer):
    """Input serializer for ``POST /v1/embeddings`` (drives validation and the OpenAPI schema).

    Strict types, as OpenAI is: ``"5"`` is not a valid ``dimensions``, ``5`` is
    not a valid ``model``. Unknown fields are rejected (400 ``unknown_parameter``).
    """

    input = RawJSONField(help_text="A string, array of strings, array of token ids, "
                                   "or array of token-id arrays (at most 2048 inputs).",
                         schema={"oneOf": [{"type": "string"},
                                           {"type": "array", "items": {"type": "string"}, "minItems": 1,
                                            "maxItems": 2048},
                                           _TOKEN_IDS,
                                           {"type": "array", "items": _TOKEN_IDS, "minItems": 1, "maxItems": 2048}]})
    model = RawJSONField(help_text="A model id or alias from GET /v1/models, or a model URI "
                                   "`emb://<project_id>/<model>/latest` (Yandex AI Studio's form).",
                         schema={"type": "string"})
    encoding_format = RawJSONField(required=False, allow_null=True,
                                   help_text="`float` (default) or `base64` (little-endian float32).",
                                   schema={"type": "string", "enum": ["float", "base64"], "nullable": True})
    dimensions = RawJSONField(required=False, allow_null=True, help_text="Output size; Matryoshka models only.",
                              schema={"type": "integer", "minimum": 1, "nullable": True})
    user = RawJSONField(required=False, allow_null=True, help_text="Your end-user id.",
                        schema={"type": "string", "nullable": True})
    service_tier = RawJSONField(required=False, allow_null=True, help_text="`auto` (default), `default` or `flex`.",
                                schema={"type": "string", "enum": ["auto", "default", "flex"], "nullable": True})

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise InvalidRequestError("The request body must be a JSON object.", code="invalid_type")
        for name in data:
            if name not in self.fields:
                raise InvalidRequestError(f"Unrecognized request argument supplied: {name}",
                                          param=name, code="unknown_parameter")
        return super().to_internal_value(data)

    def validate_model(self, value):
        if not isinstance(value, str) or not value:
            raise InvalidRequestError("'model' must be a non-empty string.", param="model", code="invalid_type")
        return value

    def validate_encoding_format(self, value):
        if value is None:
            return "float"
        if value not in ENCODING_FORMATS:
            raise InvalidRequestError(
                f"Invalid value for 'encoding_format': {value!r}. Supported values are: 'float' and 'base64'.",
                param="encoding_format", code="invalid_value")
        return value

    def validate_dimensions(self, value):
        if value is None:
            return None
        if not _is_int(value) or value < 1:
            raise InvalidRequestError(f"Invalid value for 'dimensions': {value!r}. It must be a positive integer.",
                                      param="dimensions", code="invalid_value")
        return value

    def validate_user(self, value):
        if value is None:
            return ""
        if not isinstance(value, str):
            raise InvalidRequestError("'user' must be a string.", param="user", code="invalid_type")
        if "\x00" in value:
            # Stored in UsageRecord.user: PostgreSQL text cannot hold NUL, and failing there
            # would be a 500 after inference; refused here, before admission.
            raise InvalidRequestError("'user' must not contain NUL (\\u0000) characters.",
                                      param="user", code="invalid_value")
        if len(value) > MAX_USER_LENGTH:
            raise InvalidRequestError(f"'user' is too long: at most {MAX_USER_LENGTH} characters.",
                                      param="user", code="invalid_value")
        return value

    def validate_service_tier(self, value):
        if value is None:
            return "auto"
        if value not in SERVICE_TIERS:
            raise InvalidRequestError(
                f"Invalid value for 'service_tier': {value!r}. Supported values are: 'auto', 'default' and 'flex'.",
                param="service_tier", code="invalid_value")
        return value

    def to_request(self) -> EmbeddingsRequest:
        """The validated data as an `EmbeddingsRequest` (call after ``is_valid(raise_exception=True)``)."""
        data = self.validated_data
        items, kind = normalize_input(data["input"])
        return EmbeddingsRequest(
            model=data["model"],
            input=items,
            input_kind=kind,
            encoding_format=data.get("encoding_format") or "float",
            dimensions=data.get("dimensions"),
            user=data.get("user") or "",
            service_tier=data.get("service_tier") or "auto",
        )


class _EmbeddingSerializer(serializers.Serializer):
    object = serializers.CharField(help_text="`embedding`")
    index = serializers.IntegerField(help_text="Position of the input in `input`.")
    embedding = serializers.JSONField(help_text="The vector: a list of floats, or with `encoding_format: base64` "
                                                "the base64 of its little-endian float32 bytes.")


class _UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField(help_text="Tokens the model processed (special tokens and the model's "
                                                       "prompt included).")
    completion_tokens = serializers.IntegerField(help_text="Always 0 (Nebius' response type requires the field).")
    total_tokens = serializers.IntegerField(help_text="Equal to `prompt_tokens`.")


class EmbeddingsResponseSerializer(serializers.Serializer):
    """Output of ``POST /v1/embeddings`` (OpenAI's shape), for the OpenAPI schema; the body itself
    is built by `embeddings.services.embeddings_response` (vectors go to orjson as arrays)."""

    object = serializers.CharField(help_text="`list`")
    data = _EmbeddingSerializer(many=True)
    model = serializers.CharField(help_text="The canonical name of the model that served the request.")
    usage = _UsageSerializer()
    service_tier = serializers.CharField(help_text="`default` or `flex`.")


class ModelObjectSerializer(serializers.Serializer):
    """A model in ``GET /v1/models[/{id}]``: OpenAI's model object plus the embedding fields."""

    id = serializers.CharField(help_text="The name or alias this entry lists.")
    object = serializers.CharField(help_text="`model`")
    created = serializers.IntegerField(help_text="Unix time (s) of registration.")
    owned_by = serializers.CharField()
    dimensions = serializers.IntegerField(help_text="Size of the vectors.")
    max_input_tokens = serializers.IntegerField(help_text="Tokens per input, special tokens included.")
    token_ids = serializers.ChoiceField(choices=["cl100k_base", "served"],
                                        help_text="What an `input` of token ids is read as.")
    variant_of = serializers.CharField(allow_null=True,
                                       help_text="For a prompt variant, the model it shares; else null.")
    prompt = serializers.CharField(allow_null=True, help_text="The text put before every input (its tokens are "
                                                              "counted and billed); null when none.")


class ModelListSerializer(serializers.Serializer):
    """``GET /v1/models``."""

    object = serializers.CharField(help_text="`list`")
    data = ModelObjectSerializer(many=True)
