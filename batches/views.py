"""``/v1/files`` and ``/v1/batches``: OpenAI's Files and Batch API (project keys; another project's
file or batch is a 404). Thin views: `batches.files` and `batches.services` do the work."""
from __future__ import annotations

import re

from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import InvalidRequestError
from config.lists import list_object
from config.schema import error_responses
from embeddings.views import check_project_scope

from . import files, services
from .serializers import (BatchCreateSerializer, BatchListQuerySerializer, BatchListSerializer, BatchObjectSerializer,
                          FileDeletedSerializer, FileListQuerySerializer, FileListSerializer, FileObjectSerializer,
                          FileUploadSerializer, file_object)

# Bytes per read when a file's content is streamed to the client.
CONTENT_BLOCK_BYTES = 1 << 16


def _page(objects: list, has_more: bool, render) -> dict:
    return list_object([render(o) for o in objects], has_more)


def _query(serializer_class, request) -> dict:
    serializer = serializer_class(data=request.query_params)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class _ProjectAPIView(APIView):
    """Base of these views: the ``OpenAI-Project`` header / ``ai_project_id`` must name the key's
    project (403 otherwise); every lookup is inside ``request.auth.project_id``."""

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        check_project_scope(request)


def _expires_after(data) -> int | None:
    """``expires_after[seconds]`` of the upload form (``expires_after[anchor]`` must be ``created_at``), in
    at most 10 ASCII digits (``str.isdigit`` alone passes ``³⁶⁰⁰``, which ``int`` refuses, and
    ``٣٦٠٠``; ``int`` refuses more than 4,300 digits).
    Raises `InvalidRequestError` (400 ``invalid_value``)."""
    seconds, anchor = data.get("expires_after[seconds]"), data.get("expires_after[anchor]")
    if seconds is None and anchor is None:
        return None
    if anchor != "created_at" or not re.fullmatch(r"[0-9]{1,10}", str(seconds or "")):
        raise InvalidRequestError("'expires_after' needs anchor 'created_at' and a number of seconds.",
                                  param="expires_after", code="invalid_value")
    return int(seconds)


# The fields of OpenAI's upload form (``POST /v1/files``).
UPLOAD_FIELDS = ("file", "purpose", "expires_after[anchor]", "expires_after[seconds]")


def _check_upload_fields(data) -> None:
    """The upload form holds only `UPLOAD_FIELDS`, each once, as the JSON endpoints refuse unknown
    fields: 400 ``unknown_parameter`` for another field, ``invalid_value`` for one given twice (two
    file parts: which one to keep would be a guess). Raises `InvalidRequestError`."""
    for name in data:
        if name not in UPLOAD_FIELDS:
            raise InvalidRequestError(f"Unrecognized request argument supplied: {name[:100]}", param=name[:100],
                                      code="unknown_parameter")
        if len(data.getlist(name)) > 1:
            raise InvalidRequestError(f"'{name}' was given more than once; give it once.", param=name,
                                      code="invalid_value")


class FileListView(_ProjectAPIView):
    """``POST /v1/files`` (upload, purpose ``batch``) and ``GET /v1/files``."""

    parser_classes = [MultiPartParser]  # a file travels only in multipart/form-data

    @extend_schema(request={"multipart/form-data": FileUploadSerializer},
                   responses={200: FileObjectSerializer, **error_responses(400, 401, 403, 413)},
                   summary="Upload a file", operation_id="createFile",
                   description="A JSONL file of requests for the Batch API (purpose `batch`, at most 200 MB).")
    def post(self, request):
        _check_upload_fields(request.data)
        upload = request.data.get("file")
        if upload is None or isinstance(upload, str):
            raise InvalidRequestError("Missing required parameter: 'file' (a file part).", param="file",
                                      code="missing_required_parameter")
        purpose = request.data.get("purpose")
        if not purpose:
            raise InvalidRequestError("Missing required parameter: 'purpose'.", param="purpose",
                                      code="missing_required_parameter")
        if purpose != "batch":
            raise InvalidRequestError(f"Invalid value for 'purpose': {purpose!r}. Supported values are: 'batch'.",
                                      param="purpose", code="invalid_value")
        file = files.file_create(key=request.auth, upload=upload, purpose=purpose, filename=upload.name,
                                 expires_after_seconds=_expires_after(request.data))
        return Response(file_object(file))

    @extend_schema(parameters=[FileListQuerySerializer],
                   responses={200: FileListSerializer, **error_responses(400, 401, 403)},
                   summary="List files", operation_id="listFiles")
    def get(self, request):
        query = _query(FileListQuerySerializer, request)
        rows, has_more = files.files_list(project_id=request.auth.project_id, purpose=query.get("purpose"),
                                          after=query.get("after"), limit=query["limit"], order=query["order"])
        return Response(_page(rows, has_more, file_object))


class FileDetailView(_ProjectAPIView):
    """``GET /v1/files/{file_id}`` and ``DELETE /v1/files/{file_id}``."""

    @extend_schema(responses={200: FileObjectSerializer, **error_responses(401, 403, 404)},
                   summary="Retrieve a file", operation_id="retrieveFile")
    def get(self, request, file_id: str):
        return Response(file_object(files.file_get(project_id=request.auth.project_id, public_id=file_id)))

    @extend_schema(responses={200: FileDeletedSerializer, **error_responses(400, 401, 403, 404)},
                   summary="Delete a file", operation_id="deleteFile")
    def delete(self, request, file_id: str):
        file = files.file_get(project_id=request.auth.project_id, public_id=file_id)
        files.file_delete(file=file)
        return Response({"id": file_id, "object": "file", "deleted": True})


class _AnyAccept(BaseContentNegotiation):
    """The content is the file's bytes whatever the client accepts (the official client sends
    ``Accept: application/binary``); errors are still rendered with the first renderer (JSON)."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class FileContentView(_ProjectAPIView):
    """``GET /v1/files/{file_id}/content``: the file's bytes, streamed."""

    content_negotiation_class = _AnyAccept

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiResponse(OpenApiTypes.BINARY),
                              **error_responses(401, 403, 404)},
                   summary="Retrieve file content", operation_id="downloadFile")
    def get(self, request, file_id: str):
        file = files.file_get(project_id=request.auth.project_id, public_id=file_id)
        response = FileResponse(files.file_open(file), content_type="application/octet-stream",
                                as_attachment=True, filename=file.filename)
        response.block_size = CONTENT_BLOCK_BYTES
        return response


class BatchListView(_ProjectAPIView):
    """``POST /v1/batches`` and ``GET /v1/batches``."""

    @extend_schema(request=BatchCreateSerializer,
                   responses={200: BatchObjectSerializer, **error_responses(400, 401, 403, 404)},
                   summary="Create a batch", operation_id="createBatch",
                   description="Runs the requests of an uploaded file (`/v1/embeddings` only) within 24 h.")
    def post(self, request):
        serializer = BatchCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        batch = services.batch_create(key=request.auth, input_file_id=data["input_file_id"], endpoint=data["endpoint"],
                                      completion_window=data["completion_window"], metadata=data.get("metadata"))
        return Response(services.batch_object(batch))

    @extend_schema(parameters=[BatchListQuerySerializer],
                   responses={200: BatchListSerializer, **error_responses(400, 401, 403)},
                   summary="List batches", operation_id="listBatches")
    def get(self, request):
        query = _query(BatchListQuerySerializer, request)
        rows, has_more = services.batches_list(project_id=request.auth.project_id, after=query.get("after"),
                                               limit=query["limit"])
        return Response(_page(rows, has_more, services.batch_object))


class BatchDetailView(_ProjectAPIView):
    """``GET /v1/batches/{batch_id}``."""

    @extend_schema(responses={200: BatchObjectSerializer, **error_responses(401, 403, 404)},
                   summary="Retrieve a batch", operation_id="retrieveBatch")
    def get(self, request, batch_id: str):
        return Response(services.batch_object(services.batch_get(project_id=request.auth.project_id,
                                                                 public_id=batch_id)))


class BatchCancelView(_ProjectAPIView):
    """``POST /v1/batches/{batch_id}/cancel``."""

    @extend_schema(request=None, responses={200: BatchObjectSerializer, **error_responses(401, 403, 404, 409)},
                   summary="Cancel a batch", operation_id="cancelBatch")
    def post(self, request, batch_id: str):
        batch = services.batch_get(project_id=request.auth.project_id, public_id=batch_id)
        return Response(services.batch_object(services.batch_cancel(batch=batch)))
