"""One line of a batch: reading it from the input file, validating its ``body`` exactly as
``POST /v1/embeddings`` does, and writing its output line.

Input line (OpenAI's): ``{"custom_id": str, "method": "POST", "url": "/v1/embeddings", "body": {...}}``.
Output line: ``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``;
``response.body`` is what the synchronous API would have answered: the embeddings response, or
its error envelope (`line_error`), produced by the same code (`EmbeddingsRequestSerializer`,
`embeddings.services`, `config.errors.openai_exception_handler`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import orjson
from rest_framework.exceptions import ValidationError

from accounts.selectors import ResolvedKey
from config.errors import APIError, openai_exception_handler
from config.exceptions import EmbeddingsError
from embeddings.models import EmbeddingModel
from embeddings.selectors import embedding_model_get
from embeddings.serializers import EmbeddingsRequest, EmbeddingsRequestSerializer
from embeddings.services import (EmbeddingsResult, check_dimensions, embedding_model_for_key, embeddings_response,
                                 model_uri_resolve, tokenize_inputs)

UTF8_BOM = b"\xef\xbb\xbf"
# The most errors a failed batch lists (the file may have thousands of bad lines).
MAX_ERRORS = 100
SERVICE_TIER = "batch"
# What the synchronous API answers with an error status for a body: what fails one line only.
LINE_ERRORS = (ValidationError, APIError, EmbeddingsError)


@dataclass(frozen=True)
class LineError:
    """A problem with the file itself at ``line`` (1-based, as OpenAI numbers them; None: the
    whole file): OpenAI's batch error object."""

    code: str
    message: str
    line: int | None = None
    param: str | None = None

    def as_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass(frozen=True)
class InputLine:
    """A well-formed input line: its index (0-based), ``custom_id`` and ``body`` (not yet validated)."""

    index: int
    custom_id: str
    body: object


def _unmarked(raw: bytes, index: int) -> bytes:
    """Line ``index`` (0-based) without the UTF-8 byte order mark that may open the file (line 0)."""
    return raw[len(UTF8_BOM):] if index == 0 and raw.startswith(UTF8_BOM) else raw


def line_blank(raw: bytes, *, index: int) -> bool:
    """Whether input line ``index`` (0-based) holds nothing but white space (skipped, as OpenAI skips
    it), a byte order mark opening the file aside."""
    return not _unmarked(raw, index).strip()


def line_read(raw: bytes, *, index: int, endpoint: str) -> InputLine | LineError:
    """Parse input line ``index`` (0-based) of a batch for ``endpoint``; a `LineError` when the line
    is not a JSON object with a string ``custom_id``, ``method`` ``POST``, ``url`` equal to the
    batch's endpoint, and a ``body`` (what makes the whole file invalid, as for OpenAI). A UTF-8 byte
    order mark opening the file (line 0), as Windows editors save one, is not part of the line."""
    number = index + 1
    raw = _unmarked(raw, index)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return LineError("invalid_json_line", f"Line {number} is not parseable as valid JSON.", number)
    if not isinstance(data, dict):
        return LineError("invalid_request", f"Line {number} is not a JSON object.", number)
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return LineError("invalid_request", f"Line {number}: 'custom_id' must be a non-empty string.", number,
                         "custom_id")
    if data.get("method") != "POST":
        return LineError("invalid_request", f"Line {number}: 'method' must be 'POST'.", number, "method")
    if data.get("url") != endpoint:
        return LineError("invalid_url", f"Line {number}: the URL provided for this request does not match the "
                                        f"batch endpoint {endpoint!r}.", number, "url")
    if "body" not in data:
        return LineError("invalid_request", f"Line {number}: 'body' is missing.", number, "body")
    unknown = set(data) - {"custom_id", "method", "url", "body"}
    if unknown:
        return LineError("invalid_request", f"Line {number}: unrecognized field {sorted(unknown)[0]!r}.", number,
                         sorted(unknown)[0])
    return InputLine(index=index, custom_id=custom_id, body=data["body"])


@dataclass(frozen=True)
class PreparedLine:
    """A line whose body the synchronous API accepts: the request, its model, and the exact token
    ids of each input (special tokens included) with their total."""

    line: InputLine
    request: EmbeddingsRequest
    model: EmbeddingModel
    token_ids: list[list[int]]
    tokens: int


def line_prepare(line: InputLine, key: ResolvedKey) -> PreparedLine:
    """Validate ``line.body`` as ``POST /v1/embeddings`` validates a body sent with ``key`` (the
    batch's: its project's and its key's model allowlists as they are now; shape, model, model URI,
    allowlists, dimensions, tokens; the same code), and tokenize it. Raises what the synchronous API
    raises for that body (DRF's ``ValidationError``, `config.errors.APIError`s,
    `config.exceptions.ModelNotAllowed` and ``InvalidInput``); `line_error` turns it into that API's
    status and envelope."""
    serializer = EmbeddingsRequestSerializer(data=line.body)
    serializer.is_valid(raise_exception=True)
    request = serializer.to_request()
    model = embedding_model_for_key(key=key, name=request.model)
    check_dimensions(model=model, dimensions=request.dimensions)
    tokenized = tokenize_inputs(request=request, model=model)
    return PreparedLine(line=line, request=request, model=model, token_ids=tokenized.token_ids,
                        tokens=tokenized.total_tokens)


def line_model_name(body, key: ResolvedKey) -> str | None:
    """The registered model a body sent with ``key`` names, by its canonical name (two aliases, or a
    model URI and the name in it, are one model); None when it names none that is registered (then
    that is the line's own error, 404 ``model_not_found`` or 403 ``mismatched_project``, as the
    synchronous API answers)."""
    name = body.get("model") if isinstance(body, dict) else None
    if not isinstance(name, str):
        return None
    try:
        return embedding_model_get(name=model_uri_resolve(key, name)).name
    except APIError:
        return None


def line_ids(batch_public_id: str, index: int) -> tuple[str, str]:
    """``(id, request_id)`` of line ``index`` of a batch: ``batch_req_...`` and ``req_...``, the same on
    every run of its chunk (the request id is the usage record's idempotency key)."""
    digest = hashlib.sha256(f"{batch_public_id}:{index}".encode()).hexdigest()[:32]
    return f"batch_req_{digest}", f"req_{digest}"


def _output_line(batch_public_id: str, index: int, custom_id: str, status: int | None, body: dict | None,
                 error: dict | None = None) -> bytes:
    line_id, request_id = line_ids(batch_public_id, index)
    response = None if status is None else {"status_code": status, "request_id": request_id, "body": body}
    return orjson.dumps({"id": line_id, "custom_id": custom_id, "response": response, "error": error},
                        option=orjson.OPT_SERIALIZE_NUMPY)


def line_success(batch_public_id: str, prepared: PreparedLine, vectors: np.ndarray) -> bytes:
    """The output line of a completed request: status 200 and the synchronous API's response body
    (``vectors``: ``(n, d)`` float32 in input order; ``service_tier`` ``batch``)."""
    result = EmbeddingsResult(vectors=vectors, model=prepared.model, total_tokens=prepared.tokens,
                              service_tier=SERVICE_TIER)
    body = embeddings_response(result=result, encoding_format=prepared.request.encoding_format)
    return _output_line(batch_public_id, prepared.line.index, prepared.line.custom_id, 200, body)


def line_error(batch_public_id: str, line: InputLine, exc: Exception) -> bytes | None:
    """The error-file line of a request that failed with ``exc``: the status and envelope the
    synchronous API answers for it; None when ``exc`` is not an error that API reports."""
    response = openai_exception_handler(exc, {})
    if response is None:
        return None
    return _output_line(batch_public_id, line.index, line.custom_id, response.status_code, response.data)


def line_not_run(batch_public_id: str, index: int, custom_id: str, *, code: str, message: str) -> bytes:
    """The error-file line of a request that never ran (``batch_expired``): no response, an ``error``."""
    return _output_line(batch_public_id, index, custom_id, None, None, {"code": code, "message": message})
