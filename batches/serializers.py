"""Input and output serializers of ``/v1/files`` and ``/v1/batches`` (OpenAI's File and Batch
objects); they drive validation and the OpenAPI schema. Bodies are built by `batches.services`
(`batch_object`) and `file_object` here."""
from __future__ import annotations

from rest_framework import serializers

from config.errors import InvalidRequestError

from .models import File


def file_object(file: File) -> dict:
    """OpenAI's File object (times in Unix seconds; ``status`` is always ``processed``)."""
    return {"id": file.public_id, "object": "file", "bytes": file.bytes, "created_at": int(file.created_at.timestamp()),
            "expires_at": int(file.expires_at.timestamp()) if file.expires_at else None, "filename": file.filename,
            "purpose": file.purpose, "status": "processed", "status_details": None}


class _StrictSerializer(serializers.Serializer):
    """Unknown fields are refused (400 ``unknown_parameter``), as ``POST /v1/embeddings`` refuses them."""

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise InvalidRequestError("The request body must be a JSON object.", code="invalid_type")
        for name in data:
            if name not in self.fields:
                raise InvalidRequestError(f"Unrecognized request argument supplied: {name}", param=name,
                                          code="unknown_parameter")
        return super().to_internal_value(data)


class StringField(serializers.CharField):
    """A JSON string and nothing else: a number or a boolean is refused (400 ``invalid_value``), not
    turned into its text as DRF's ``CharField`` does (OpenAI's metadata values are strings)."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class FileUploadSerializer(serializers.Serializer):
    """``POST /v1/files`` (multipart/form-data). ``expires_after[anchor]=created_at`` and
    ``expires_after[seconds]`` (3600 to 2592000) may be sent too (OpenAI's form fields)."""

    file = serializers.FileField(help_text="The JSONL file (at most 200 MB).")
    purpose = serializers.ChoiceField(choices=["batch"], help_text="`batch`.")


class FileObjectSerializer(serializers.Serializer):
    """OpenAI's File object."""

    id = serializers.CharField(help_text="`file-...`")
    object = serializers.CharField(help_text="`file`")
    bytes = serializers.IntegerField()
    created_at = serializers.IntegerField(help_text="Unix seconds.")
    expires_at = serializers.IntegerField(allow_null=True, help_text="Unix seconds: when it is deleted.")
    filename = serializers.CharField()
    purpose = serializers.ChoiceField(choices=["batch", "batch_output"])
    status = serializers.CharField(help_text="`processed`")
    status_details = serializers.CharField(allow_null=True)


class _ListSerializer(serializers.Serializer):
    object = serializers.CharField(help_text="`list`")
    first_id = serializers.CharField(allow_null=True)
    last_id = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


class FileListSerializer(_ListSerializer):
    """``GET /v1/files``."""

    data = FileObjectSerializer(many=True)


class FileListQuerySerializer(serializers.Serializer):
    """Query of ``GET /v1/files`` (OpenAI's): ``purpose``, ``after`` (a file id), ``limit`` (1-10000),
    ``order`` (``asc``/``desc``)."""

    purpose = serializers.CharField(required=False, max_length=32)
    after = serializers.CharField(required=False, max_length=64)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=10000, default=10000)
    order = serializers.ChoiceField(choices=["asc", "desc"], required=False, default="desc")


class FileDeletedSerializer(serializers.Serializer):
    """``DELETE /v1/files/{file_id}``."""

    id = serializers.CharField()
    object = serializers.CharField(help_text="`file`")
    deleted = serializers.BooleanField()


class BatchCreateSerializer(_StrictSerializer):
    """``POST /v1/batches``."""

    input_file_id = serializers.CharField(max_length=64, help_text="A file of purpose `batch`.")
    endpoint = serializers.CharField(max_length=64, help_text="`/v1/embeddings`.")
    completion_window = serializers.CharField(max_length=8, help_text="`24h`.")
    metadata = serializers.DictField(child=StringField(max_length=512, allow_blank=True), required=False,
                                     allow_null=True, help_text="Up to 16 string pairs (keys up to 64 characters).")


class _RequestCountsSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    completed = serializers.IntegerField()
    failed = serializers.IntegerField()


class _BatchErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    line = serializers.IntegerField(allow_null=True, help_text="1-based line of the input file.")


class _BatchErrorsSerializer(serializers.Serializer):
    object = serializers.CharField(help_text="`list`")
    data = _BatchErrorSerializer(many=True)


class _TokensDetailsSerializer(serializers.Serializer):
    cached_tokens = serializers.IntegerField()


class _OutputDetailsSerializer(serializers.Serializer):
    reasoning_tokens = serializers.IntegerField()


class _BatchUsageSerializer(serializers.Serializer):
    input_tokens = serializers.IntegerField(help_text="Tokens of the completed requests (billed).")
    input_tokens_details = _TokensDetailsSerializer()
    output_tokens = serializers.IntegerField()
    output_tokens_details = _OutputDetailsSerializer()
    total_tokens = serializers.IntegerField()


class BatchObjectSerializer(serializers.Serializer):
    """OpenAI's Batch object (times in Unix seconds, null until they happen)."""

    id = serializers.CharField(help_text="`batch_...`")
    object = serializers.CharField(help_text="`batch`")
    endpoint = serializers.CharField()
    model = serializers.CharField(allow_null=True)
    errors = _BatchErrorsSerializer(allow_null=True)
    input_file_id = serializers.CharField()
    completion_window = serializers.CharField()
    status = serializers.ChoiceField(choices=["validating", "failed", "in_progress", "finalizing", "completed",
                                              "expired", "cancelling", "cancelled"])
    output_file_id = serializers.CharField(allow_null=True)
    error_file_id = serializers.CharField(allow_null=True)
    created_at = serializers.IntegerField()
    in_progress_at = serializers.IntegerField(allow_null=True)
    expires_at = serializers.IntegerField(allow_null=True)
    finalizing_at = serializers.IntegerField(allow_null=True)
    completed_at = serializers.IntegerField(allow_null=True)
    failed_at = serializers.IntegerField(allow_null=True)
    expired_at = serializers.IntegerField(allow_null=True)
    cancelling_at = serializers.IntegerField(allow_null=True)
    cancelled_at = serializers.IntegerField(allow_null=True)
    request_counts = _RequestCountsSerializer()
    usage = _BatchUsageSerializer()
    metadata = serializers.DictField(child=serializers.CharField(), allow_null=True)


class BatchListSerializer(_ListSerializer):
    """``GET /v1/batches``."""

    data = BatchObjectSerializer(many=True)


class BatchListQuerySerializer(serializers.Serializer):
    """Query of ``GET /v1/batches``: ``after`` (a batch id), ``limit`` (1-100, default 20)."""

    after = serializers.CharField(required=False, max_length=64)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=100, default=20)
