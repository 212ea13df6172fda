"""Batches (``/v1/batches``, OpenAI's Batch object) and their processing on the workers.

The life of a batch (every step a Celery task on ``BATCH_QUEUE``, sent by name):

1. `batch_create` (the API): a ``validating`` batch; sends ``batches.validate``.
2. `batch_validate`: reads the whole input file once (streamed). File-level problems (not JSON
   lines, a bad ``url``/``method``/``custom_id``, a duplicate ``custom_id``, more than
   ``BATCH_MAX_REQUESTS`` requests or ``BATCH_MAX_INPUTS`` inputs, more than one model, an empty
   file) fail the batch with ``errors`` and nothing runs. So does going past the organization's
   ``batch_1_day_max_input_tokens`` for the model (``token_limit_exceeded``). Each body is validated
   and tokenized as ``POST /v1/embeddings`` would (`batches.lines.line_prepare`); the lines are
   packed into chunks of about ``BATCH_CHUNK_TOKENS`` tokens (`BatchChunk`), and the batch is
   ``in_progress``.
3. `batch_advance` keeps ``BATCH_CHUNKS_IN_FLIGHT`` chunks of the batch sent (``batches.run_chunk``);
   the others wait in the database, so a batch never fills a worker's slots or the broker
   ahead of interactive chunks.
4. `chunk_run`: a body the synchronous API rejects becomes that API's error envelope in the
   error file; the others are encoded in the worker's micro-batcher at tier ``batch``, one forward
   pass of ``BATCH_PASS_TOKENS`` at a time, which runs only when no interactive work waits
   (`embeddings.serving.batching`). Then the lines' tokens are reserved against the monthly quota
   (``service_tier="batch"``: no RPM/TPM); lines past the quota fail with ``insufficient_quota``
   and every later line of the batch too. Results and usage records (one per line, tier
   ``batch``) are written in one transaction that marks the chunk done under its row lock: a
   redelivered chunk (its worker died) writes nothing twice. ``request_counts`` move as chunks end.
5. `batch_finalize`: the output and error files, in line order; ``completed`` (or ``cancelled``,
   ``expired``).

Cancel (`batch_cancel`) stops within one chunk (running chunks check between passes); beat's
`batches_tick` expires batches at ``expires_at`` (lines that did not run go to the error file as
``batch_expired``), re-sends chunks and tasks that were lost, and deletes expired files.
"""
from __future__ import annotations

import logging
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace

import numpy as np
from django.conf import settings
from django.core.files import File as DjangoFile
from django.db import connection, transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from accounts.selectors import ResolvedKey
from config.errors import InvalidRequestError, NotFoundError, RateLimitError
from embeddings.dispatch import chunk_by_tokens
from embeddings.models import EmbeddingModel
from embeddings.services import batcher_for
from embeddings.serving.engine import renormalize
from limits.admission import Reservation, admission_reserve
from limits.selectors import batch_queue_limit_get
from metering.models import UsageRecord
from metering.services import usage_records_create_many

from . import files
from .lines import (LINE_ERRORS, MAX_ERRORS, SERVICE_TIER, InputLine, LineError, PreparedLine, line_blank, line_error,
                    line_ids, line_model_name, line_not_run, line_prepare, line_read, line_success)
from .models import Batch, BatchChunk, BatchResult, File

logger = logging.getLogger(__name__)

ENDPOINTS = ("/v1/embeddings",)
COMPLETION_WINDOWS = ("24h",)
# OpenAI's metadata: at most 16 pairs, keys up to 64 characters, values up to 512.
METADATA_MAX_PAIRS, METADATA_KEY_MAX, METADATA_VALUE_MAX = 16, 64, 512
READ_BYTES = 1 << 16  # bytes per read of an input file
# pg_advisory_xact_lock namespace of the enqueued-tokens check (one lock per organization).
_QUEUE_LOCK = 0x62617463  # "batc"
RUNNING = (Batch.Status.IN_PROGRESS, Batch.Status.FINALIZING, Batch.Status.CANCELLING)
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


def task_send(name: str, *args, task_id: str | None = None) -> None:
    """Send task ``name`` (`batches.tasks`) to ``BATCH_QUEUE`` by name (under ``task_id`` when given).
    A broker that cannot be reached is logged: beat's `batches_tick` sends lost work again."""
    from celery import current_app
    from kombu.exceptions import OperationalError

    try:
        current_app.send_task(name, args=args, queue=settings.BATCH_QUEUE, task_id=task_id)
    except OperationalError as exc:
        logger.warning("Could not send %s%s (%s); the batch tick will send it again", name, args, exc)


# --- Create, read, cancel -----------------------------------------------------------------------------

def _metadata_check(metadata) -> dict | None:
    """``metadata`` when it is OpenAI's (None, or at most `METADATA_MAX_PAIRS` pairs of strings, keys
    up to `METADATA_KEY_MAX` characters and values up to `METADATA_VALUE_MAX`), none holding NUL
    (PostgreSQL's jsonb cannot). Raises `InvalidRequestError` (400 ``invalid_value``) otherwise."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > METADATA_MAX_PAIRS or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= METADATA_KEY_MAX and len(v) <= METADATA_VALUE_MAX
            and "\x00" not in k and "\x00" not in v for k, v in metadata.items()):
        raise InvalidRequestError(
            f"Invalid 'metadata': at most {METADATA_MAX_PAIRS} pairs of strings, keys up to {METADATA_KEY_MAX} "
            f"characters and values up to {METADATA_VALUE_MAX}, without NUL (\\u0000).", param="metadata",
            code="invalid_value")
    return metadata


def batch_create(*, key, input_file_id: str, endpoint: str, completion_window: str, metadata=None) -> Batch:
    """A new batch of the key's project (``key``: `accounts.selectors.ResolvedKey`) over its file
    ``input_file_id``, status ``validating``; validation runs on a worker (``batches.validate``).

    Raises `InvalidRequestError` (400) for an endpoint other than ``/v1/embeddings``, a window other
    than ``24h``, bad ``metadata`` or a file whose purpose is not ``batch``; `NotFoundError` (404)
    when the file is not one of the project's.
    """
    if endpoint not in ENDPOINTS:
        raise InvalidRequestError(f"Invalid value for 'endpoint': {endpoint!r}. Supported values are: "
                                  "'/v1/embeddings'.", param="endpoint", code="invalid_value")
    if completion_window not in COMPLETION_WINDOWS:
        raise InvalidRequestError(f"Invalid value for 'completion_window': {completion_window!r}. Supported "
                                  "values are: '24h'.", param="completion_window", code="invalid_value")
    metadata = _metadata_check(metadata)
    file = files.file_get(project_id=key.project_id, public_id=input_file_id)
    if file.purpose != File.Purpose.BATCH:
        raise InvalidRequestError(f"File {input_file_id} has purpose {file.purpose!r}; a batch needs a file with "
                                  "purpose 'batch'.", param="input_file_id", code="invalid_value")
    now = timezone.now()
    batch = Batch.objects.create(
        organization_id=key.organization_id, project_id=key.project_id, api_key_id=key.key_id,
        key_allowed_models=list(key.allowed_models), input_file_id=file.public_id, endpoint=endpoint,
        completion_window=completion_window, metadata=metadata,
        created_at=now, expires_at=now + timedelta(seconds=settings.BATCH_COMPLETION_WINDOW_SECONDS),
        dispatched_at=now)
    task_send("batches.validate", batch.pk)
    return batch


def batch_get(*, project_id: int, public_id: str) -> Batch:
    """The batch ``public_id`` of the project; `NotFoundError` (404) when it is not one of its batches."""
    batch = Batch.objects.select_related("model").filter(project_id=project_id, public_id=public_id).first()
    if batch is None:
        raise NotFoundError(f"No batch found with id '{public_id}'.", param="batch_id", code="not_found")
    return batch


def batches_list(*, project_id: int, after: str | None = None, limit: int = 20) -> tuple[list[Batch], bool]:
    """The project's batches, newest first, after the batch ``after`` (a cursor: its public id), at
    most ``limit``; returns ``(batches, has_more)``."""
    rows = Batch.objects.select_related("model").filter(project_id=project_id)
    if after:
        cursor = Batch.objects.filter(project_id=project_id, public_id=after).values("created_at", "pk").first()
        if cursor is not None:
            rows = rows.filter(Q(created_at__lt=cursor["created_at"])
                               | Q(created_at=cursor["created_at"], pk__lt=cursor["pk"]))
    page = list(rows.order_by("-created_at", "-pk")[:limit + 1])
    return page[:limit], len(page) > limit


def batch_cancel(*, batch: Batch) -> Batch:
    """Cancel ``batch``: a ``validating`` one is ``cancelled`` at once; an ``in_progress`` one becomes
    ``cancelling``: no chunk starts any more, running chunks stop at their next forward pass, and
    the batch is ``cancelled`` (with the output of what completed) when they have. Cancelling a
    cancelling or cancelled batch changes nothing. Raises `InvalidRequestError` (409
    ``batch_not_cancellable``) for a batch that is finalizing or finished otherwise."""
    now = timezone.now()
    with transaction.atomic():
        locked = Batch.objects.select_for_update().get(pk=batch.pk)
        if locked.status == Batch.Status.VALIDATING:
            locked.status, locked.stop = Batch.Status.CANCELLED, "cancel"
            locked.cancelling_at = locked.cancelled_at = now
            locked.save(update_fields=["status", "stop", "cancelling_at", "cancelled_at"])
        elif locked.status == Batch.Status.IN_PROGRESS:
            locked.status, locked.stop, locked.cancelling_at = Batch.Status.CANCELLING, "cancel", now
            locked.save(update_fields=["status", "stop", "cancelling_at"])
        elif locked.status not in (Batch.Status.CANCELLING, Batch.Status.CANCELLED):
            raise InvalidRequestError(f"Cannot cancel a batch with status '{locked.status}'.", param=None,
                                      code="batch_not_cancellable", status_code=409)
    batch_advance(batch_id=batch.pk)
    return batch_get(project_id=batch.project_id, public_id=batch.public_id)


def batch_object(batch: Batch) -> dict:
    """OpenAI's Batch object of ``batch`` (times in Unix seconds; ``usage``: the completed lines' tokens)."""
    def ts(moment: datetime | None) -> int | None:
        return int(moment.timestamp()) if moment else None

    return {
        "id": batch.public_id, "object": "batch", "endpoint": batch.endpoint,
        "model": batch.model.name if batch.model_id else None,
        "errors": batch.errors, "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window, "status": batch.status,
        "output_file_id": batch.output_file_id or None, "error_file_id": batch.error_file_id or None,
        "created_at": ts(batch.created_at), "in_progress_at": ts(batch.in_progress_at),
        "expires_at": ts(batch.expires_at), "finalizing_at": ts(batch.finalizing_at),
        "completed_at": ts(batch.completed_at), "failed_at": ts(batch.failed_at),
        "expired_at": ts(batch.expired_at), "cancelling_at": ts(batch.cancelling_at),
        "cancelled_at": ts(batch.cancelled_at),
        "request_counts": {"total": batch.total, "completed": batch.completed, "failed": batch.failed},
        "usage": {"input_tokens": batch.input_tokens, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": 0, "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": batch.input_tokens},
        "metadata": batch.metadata,
    }


# --- Reading an input file ----------------------------------------------------------------------------

def _lines(stream, *, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """The lines (``\\n`` kept) of ``stream`` between byte offsets ``start`` and ``end``, read in
    `READ_BYTES` pieces: the file is never held whole."""
    if start:
        stream.seek(start)
    left = None if end is None else end - start
    rest = b""
    while left is None or left > 0:
        piece = stream.read(READ_BYTES if left is None else min(READ_BYTES, left))
        if not piece:
            break
        if left is not None:
            left -= len(piece)
        parts = (rest + piece).split(b"\n")
        rest = parts.pop()
        for part in parts:
            yield part + b"\n"
    if rest:
        yield rest


def _input_file(batch: Batch) -> File:
    return File.objects.get(project_id=batch.project_id, public_id=batch.input_file_id)


# --- Validation ------------------------------------------------------------------------------------------

@dataclass
class _Scan:
    """What validation found: file-level ``errors``, request count, inputs, valid tokens, models
    named, and the chunks (unsaved `BatchChunk` rows)."""

    errors: list[LineError] = field(default_factory=list)
    total: int = 0
    inputs: int = 0
    tokens: int = 0
    models: set = field(default_factory=set)
    chunks: list[BatchChunk] = field(default_factory=list)


def _scan(batch: Batch, file: File) -> _Scan:
    scan = _Scan()
    key = _resolved_key(batch)
    seen: set[str] = set()
    offset = 0
    current: BatchChunk | None = None
    with files.file_open(file) as stream:
        for index, raw in enumerate(_lines(stream)):
            start, offset = offset, offset + len(raw)
            if len(scan.errors) >= MAX_ERRORS:
                break
            if line_blank(raw, index=index):
                continue
            line = line_read(raw, index=index, endpoint=batch.endpoint)
            if isinstance(line, LineError):
                scan.errors.append(line)
                continue
            if line.custom_id in seen:
                scan.errors.append(LineError("duplicate_custom_id", f"The custom_id {line.custom_id!r} of line "
                                             f"{index + 1} is used by an earlier line.", index + 1, "custom_id"))
                continue
            seen.add(line.custom_id)
            scan.total += 1
            if scan.total > settings.BATCH_MAX_REQUESTS:
                scan.errors.append(LineError("too_many_requests", f"The file has more than "
                                             f"{settings.BATCH_MAX_REQUESTS} requests.", index + 1))
                break
            name = line_model_name(line.body, key)
            if name is not None and name not in scan.models:
                scan.models.add(name)
                if len(scan.models) == 2:
                    scan.errors.append(LineError("mismatched_model", f"Line {index + 1} names model {name!r}; a "
                                                 "batch takes one model in all its requests.", index + 1, "model"))
            tokens = 0
            try:
                prepared = line_prepare(line, key)
            except LINE_ERRORS:
                pass  # the line's own error: written to the error file by its chunk, the others run
            else:
                tokens = prepared.tokens
                scan.tokens += tokens
                scan.inputs += len(prepared.token_ids)
                if scan.inputs > settings.BATCH_MAX_INPUTS:
                    scan.errors.append(LineError("too_many_inputs", f"The file has more than "
                                                 f"{settings.BATCH_MAX_INPUTS} embedding inputs.", index + 1))
                    break
            if current is not None and current.tokens + tokens > settings.BATCH_CHUNK_TOKENS and current.tokens:
                scan.chunks.append(current)
                current = None
            if current is None:
                current = BatchChunk(batch=batch, index=len(scan.chunks), start_line=index, start_byte=start,
                                     tokens=0)
            current.end_line, current.end_byte = index + 1, offset
            current.tokens += tokens
    if current is not None:
        scan.chunks.append(current)
    if not scan.errors and scan.total == 0:
        scan.errors.append(LineError("empty_file", "The batch input file has no requests."))
    return scan


def _fail(batch_id: int, errors: list[LineError]) -> None:
    with transaction.atomic():
        locked = Batch.objects.select_for_update().get(pk=batch_id)
        if locked.status != Batch.Status.VALIDATING:
            return
        locked.status, locked.failed_at = Batch.Status.FAILED, timezone.now()
        locked.errors = {"object": "list", "data": [e.as_dict() for e in errors[:MAX_ERRORS]]}
        locked.save(update_fields=["status", "failed_at", "errors"])


def _queue_limit_errors(batch: Batch, model: EmbeddingModel | None, tokens: int) -> list[LineError]:
    """``[token_limit_exceeded]`` when ``tokens`` more would take the organization's batches of ``model``
    past its ``batch_1_day_max_input_tokens`` (counting the batches that are running), else ``[]``.
    Inside the caller's transaction, under a lock per organization: concurrent validations take turns."""
    limit = None if model is None else batch_queue_limit_get(organization_id=batch.organization_id, model=model.name)
    if limit is None:
        return []
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_QUEUE_LOCK, batch.organization_id])
    enqueued = (Batch.objects.filter(organization_id=batch.organization_id, model=model, status__in=RUNNING)
                .aggregate(n=Sum("enqueued_tokens"))["n"] or 0)
    if enqueued + tokens <= limit:
        return []
    return [LineError("token_limit_exceeded", f"Enqueued token limit reached for {model.name} in organization "
                      f"{batch.organization.public_id}: limit {limit} tokens, {enqueued} already enqueued, this batch "
                      f"{tokens}. Please try again once some in_progress batches have been completed.")]


def batch_validate(*, batch_id: int) -> None:
    """Validate a ``validating`` batch's whole input file (see the module docstring), then either
    fail it with ``errors`` or make its chunks and start it (``in_progress``). Idempotent: a batch
    no longer validating is left alone."""
    batch = Batch.objects.filter(pk=batch_id).first()
    if batch is None or batch.status != Batch.Status.VALIDATING:
        return
    file = File.objects.filter(project_id=batch.project_id, public_id=batch.input_file_id).first()
    if file is None:
        _fail(batch_id, [LineError("file_not_found", f"The input file {batch.input_file_id} was deleted.")])
        return
    scan = _scan(batch, file)
    if scan.errors:
        _fail(batch_id, scan.errors)
        return
    model = EmbeddingModel.objects.filter(name__in=scan.models).first()
    with transaction.atomic():
        locked = Batch.objects.select_for_update().get(pk=batch_id)
        if locked.status != Batch.Status.VALIDATING:
            return
        errors = _queue_limit_errors(locked, model, scan.tokens)
        if not errors:
            BatchChunk.objects.bulk_create(scan.chunks)
            locked.status, locked.in_progress_at = Batch.Status.IN_PROGRESS, timezone.now()
            locked.total, locked.enqueued_tokens, locked.model = scan.total, scan.tokens, model
            locked.save(update_fields=["status", "in_progress_at", "total", "enqueued_tokens", "model"])
    if errors:
        _fail(batch_id, errors)
        return
    logger.info("Batch %s in progress: %d requests, %d tokens, %d chunks", batch.public_id, scan.total, scan.tokens,
                len(scan.chunks))
    batch_advance(batch_id=batch_id)


# --- Running chunks ---------------------------------------------------------------------------------------

def batch_advance(*, batch_id: int) -> None:
    """Keep ``BATCH_CHUNKS_IN_FLIGHT`` chunks of the batch sent (pending ones in order); when the batch
    stops (cancel, expiry) its pending chunks are skipped; when no chunk is pending or sent any more,
    the batch is finalized (``batches.finalize``, sent once)."""
    send: list[tuple[int, str]] = []
    finalize = False
    now = timezone.now()
    with transaction.atomic():
        batch = Batch.objects.select_for_update().filter(pk=batch_id).first()
        if batch is None or batch.status not in RUNNING:
            return
        chunks = BatchChunk.objects.filter(batch_id=batch_id)
        if batch.stop:
            chunks.filter(state=BatchChunk.State.PENDING).update(state=BatchChunk.State.SKIPPED)
        else:
            room = settings.BATCH_CHUNKS_IN_FLIGHT - chunks.filter(state=BatchChunk.State.SENT).count()
            if room > 0:
                for pk, index in chunks.filter(state=BatchChunk.State.PENDING).order_by("index") \
                        .values_list("pk", "index")[:room]:
                    task_id = str(uuid.uuid4())
                    chunks.filter(pk=pk).update(state=BatchChunk.State.SENT, sent_at=now, task_id=task_id)
                    send.append((index, task_id))
        if batch.finalizing_at is None and not chunks.filter(
                state__in=[BatchChunk.State.PENDING, BatchChunk.State.SENT]).exists():
            finalize = True
            batch.finalizing_at = batch.dispatched_at = now
            if batch.status == Batch.Status.IN_PROGRESS:
                batch.status = Batch.Status.FINALIZING
            batch.save(update_fields=["status", "finalizing_at", "dispatched_at"])
    for index, task_id in send:
        task_send("batches.run_chunk", batch_id, index, task_id=task_id)
    if finalize:
        task_send("batches.finalize", batch_id)


def _chunk_skip(chunk: BatchChunk) -> None:
    BatchChunk.objects.filter(pk=chunk.pk, state__in=[BatchChunk.State.PENDING, BatchChunk.State.SENT]) \
        .update(state=BatchChunk.State.SKIPPED)


def _stopped(batch_id: int) -> bool:
    return Batch.objects.filter(pk=batch_id).exclude(stop="").exists()


def _encode(batch: Batch, prepared: list[PreparedLine]) -> list[np.ndarray] | None:
    """Vectors of each prepared line (``(n_i, d)`` float32, ``dimensions`` applied), in forward passes
    of ``BATCH_PASS_TOKENS`` at tier ``batch``; None when the batch stopped between two passes."""
    if not prepared:
        return []
    batcher = batcher_for(prepared[0].model)
    rows = [ids for line in prepared for ids in line.token_ids]
    parts = []
    for piece in chunk_by_tokens(rows, settings.BATCH_PASS_TOKENS):
        if _stopped(batch.pk):
            return None
        parts.append(batcher.encode(piece, tier=SERVICE_TIER))
    vectors = np.concatenate(parts) if len(parts) > 1 else parts[0]
    out, start = [], 0
    for line in prepared:
        part = vectors[start:start + len(line.token_ids)]
        start += len(line.token_ids)
        dimensions = line.request.dimensions
        out.append(renormalize(part, dimensions) if dimensions is not None and dimensions < part.shape[1] else part)
    return out


def _resolved_key(batch: Batch) -> ResolvedKey:
    """The scope of the batch's lines, as ``batch`` was read (a chunk reads it anew: a change applies
    from the next chunk on): its organization and project and their limits, the key that created it
    (id 0 once that key is deleted: no key's limits apply then) and the model allowlists of both
    (of a deleted key: the one it had when the batch was made)."""
    key = batch.api_key
    return ResolvedKey(key_id=batch.api_key_id or 0, key_public_id=getattr(key, "public_id", ""),
                       project_id=batch.project_id, project_public_id=batch.project.public_id,
                       organization_id=batch.organization_id, organization_public_id=batch.organization.public_id,
                       expires_at=None, revoked_at=None, project_archived_at=None,
                       project_allowed_models=tuple(batch.project.allowed_models),
                       allowed_models=tuple(key.allowed_models if key is not None else batch.key_allowed_models))


def _reserve(key: ResolvedKey, prepared: list[PreparedLine]) -> tuple[list[Reservation], int, RateLimitError | None]:
    """Reserve the lines' tokens against the monthly quota at once, else line by line up to the quota:
    ``(reservations, lines admitted, the refusal of the first line that was not)``."""
    if not prepared:
        return [], 0, None
    try:
        return [admission_reserve(key=key, tokens=sum(p.tokens for p in prepared), service_tier=SERVICE_TIER)], \
            len(prepared), None
    except RateLimitError:
        pass
    reservations: list[Reservation] = []
    for n, line in enumerate(prepared):
        try:
            reservations.append(admission_reserve(key=key, tokens=line.tokens, service_tier=SERVICE_TIER))
        except RateLimitError as exc:
            return reservations, n, exc
    return reservations, len(prepared), None


def _quota_refusal(key: ResolvedKey, tokens: int) -> RateLimitError | None:
    """For a batch that ran out of quota: the refusal its next line gets, or None when the quota has
    room again (the probe's reservation is given back)."""
    try:
        admission_reserve(key=key, tokens=tokens, service_tier=SERVICE_TIER).refund()
    except RateLimitError as exc:
        return exc
    return None


def chunk_run(*, batch_id: int, index: int) -> None:
    """Run chunk ``index`` of a batch (the task ``batches.run_chunk``; see the module docstring).
    Idempotent: a chunk already done (a redelivered message) only advances the batch."""
    chunk = BatchChunk.objects.select_related("batch__organization", "batch__project", "batch__api_key") \
        .filter(batch_id=batch_id, index=index).first()
    if chunk is None:
        return
    batch = chunk.batch
    if chunk.state in (BatchChunk.State.DONE, BatchChunk.State.SKIPPED):
        batch_advance(batch_id=batch_id)
        return
    if batch.stop or batch.status not in RUNNING:
        _chunk_skip(chunk)
        batch_advance(batch_id=batch_id)
        return
    started = time.perf_counter()
    key = _resolved_key(batch)
    results: list[BatchResult] = []
    prepared: list[PreparedLine] = []
    with files.file_open(_input_file(batch)) as stream:
        for offset, raw in enumerate(_lines(stream, start=chunk.start_byte, end=chunk.end_byte)):
            line_index = chunk.start_line + offset
            if line_blank(raw, index=line_index):
                continue
            line = line_read(raw, index=line_index, endpoint=batch.endpoint)
            if not isinstance(line, InputLine):
                continue  # validation failed the batch for such a line: never reached
            try:
                prepared.append(line_prepare(line, key))
            except LINE_ERRORS as exc:
                results.append(BatchResult(batch=batch, line=line.index, ok=False,
                                           data=line_error(batch.public_id, line, exc)))
    refusal = _quota_refusal(key, prepared[0].tokens) if batch.quota_exhausted and prepared else None
    vectors = [] if refusal is not None else _encode(batch, prepared)
    if vectors is None:  # cancelled or expired while it ran: its lines count as not run
        _chunk_skip(chunk)
        batch_advance(batch_id=batch_id)
        return
    reservations, admitted, refused = ([], 0, refusal) if refusal is not None else _reserve(key, prepared)
    for line in prepared[admitted:]:
        results.append(BatchResult(batch=batch, line=line.line.index, ok=False,
                                   data=line_error(batch.public_id, line.line, refused)))
    done = prepared[:admitted]
    results += [BatchResult(batch=batch, line=line.line.index, ok=True, data=line_success(batch.public_id, line, v))
                for line, v in zip(done, vectors)]
    latency_ms = int((time.perf_counter() - started) * 1000)
    try:
        with transaction.atomic():
            locked = BatchChunk.objects.select_for_update().get(pk=chunk.pk)
            if locked.state in (BatchChunk.State.DONE, BatchChunk.State.SKIPPED):
                raise _AlreadyDone
            key_id = Batch.objects.filter(pk=batch_id).values_list("api_key_id", flat=True).first()
            BatchResult.objects.bulk_create(results, batch_size=500)
            now = timezone.now()
            usage_records_create_many(records=[UsageRecord(
                request_id=line_ids(batch.public_id, line.line.index)[1], organization_id=batch.organization_id,
                project_id=batch.project_id, api_key_id=key_id, model_id=line.model.pk,
                input_count=len(line.token_ids), prompt_tokens=line.tokens, total_tokens=line.tokens,
                user=line.request.user, service_tier=SERVICE_TIER, latency_ms=latency_ms, created_at=now)
                for line in done])
            locked.state, locked.done_at = BatchChunk.State.DONE, now
            locked.save(update_fields=["state", "done_at"])
            Batch.objects.filter(pk=batch_id).update(
                completed=F("completed") + len(done), failed=F("failed") + len(results) - len(done),
                input_tokens=F("input_tokens") + sum(line.tokens for line in done),
                **({"quota_exhausted": True} if refused is not None else {}))
    except BaseException as exc:
        for reservation in reservations:
            reservation.refund()
        if not isinstance(exc, _AlreadyDone):
            raise
    else:
        for reservation in reservations:
            reservation.settle()
    batch_advance(batch_id=batch_id)


class _AlreadyDone(Exception):
    """Another delivery of the chunk wrote it first."""


# --- Finalizing, expiry, the tick -------------------------------------------------------------------------

def _store_output(batch: Batch, spool, kind: str) -> str:
    """Store the spooled JSONL (an open binary file) as a ``batch_output`` file of the batch's
    project; its public id, or ``""`` when nothing was written."""
    size = spool.tell()
    if not size:
        return ""
    spool.seek(0)
    upload = DjangoFile(spool, name=f"{batch.public_id}_{kind}.jsonl")
    upload.size = size
    owner = SimpleNamespace(organization_id=batch.organization_id, organization_public_id=batch.organization.public_id,
                            project_id=batch.project_id)
    return files.file_create(key=owner, upload=upload, purpose=File.Purpose.BATCH_OUTPUT).public_id


def _not_run_lines(batch: Batch) -> Iterator[bytes]:
    """Error-file lines (``batch_expired``) of the lines of skipped chunks (they never ran)."""
    skipped = list(BatchChunk.objects.filter(batch=batch, state=BatchChunk.State.SKIPPED).order_by("index"))
    if not skipped:
        return
    with files.file_open(_input_file(batch)) as stream:
        for chunk in skipped:
            for offset, raw in enumerate(_lines(stream, start=chunk.start_byte, end=chunk.end_byte)):
                line_index = chunk.start_line + offset
                line = None if line_blank(raw, index=line_index) else line_read(raw, index=line_index,
                                                                                endpoint=batch.endpoint)
                if isinstance(line, InputLine):
                    yield line_not_run(batch.public_id, line.index, line.custom_id, code="batch_expired",
                                       message=EXPIRED_MESSAGE)


def batch_finalize(*, batch_id: int) -> None:
    """Write the output file (completed lines) and the error file (failed lines; with an expiry, the
    lines that never ran as ``batch_expired``), in line order, streamed through a temporary file;
    then the batch is ``completed``, ``cancelled`` or ``expired`` and its results are dropped from the
    database. Idempotent: a finished batch, or one with chunks still pending or sent, is left alone."""
    batch = Batch.objects.select_related("organization").filter(pk=batch_id).first()
    if batch is None or batch.is_terminal or BatchChunk.objects.filter(
            batch_id=batch_id, state__in=[BatchChunk.State.PENDING, BatchChunk.State.SENT]).exists():
        return
    not_run = 0
    with tempfile.TemporaryFile() as output, tempfile.TemporaryFile() as errors:
        for ok, data in BatchResult.objects.filter(batch_id=batch_id).order_by("line") \
                .values_list("ok", "data").iterator(chunk_size=500):
            (output if ok else errors).write(bytes(data) + b"\n")
        if batch.stop == "expire":
            for data in _not_run_lines(batch):
                errors.write(data + b"\n")
                not_run += 1
        output_id, error_id = _store_output(batch, output, "output"), _store_output(batch, errors, "error")
    now = timezone.now()
    with transaction.atomic():
        locked = Batch.objects.select_for_update().get(pk=batch_id)
        if locked.is_terminal:
            for public_id in filter(None, (output_id, error_id)):
                files.file_delete(file=File.objects.get(public_id=public_id))
            return
        locked.status = {"cancel": Batch.Status.CANCELLED, "expire": Batch.Status.EXPIRED}.get(
            locked.stop, Batch.Status.COMPLETED)
        setattr(locked, {Batch.Status.CANCELLED: "cancelled_at", Batch.Status.EXPIRED: "expired_at",
                         Batch.Status.COMPLETED: "completed_at"}[locked.status], now)
        locked.output_file_id, locked.error_file_id = output_id, error_id
        locked.failed += not_run
        locked.save()
        BatchResult.objects.filter(batch_id=batch_id).delete()
    logger.info("Batch %s %s: %d completed, %d failed", locked.public_id, locked.status, locked.completed,
                locked.failed)


def batch_expire(*, batch_id: int) -> None:
    """The completion window of the batch has passed: a ``validating`` batch is ``expired`` at once;
    an ``in_progress`` one stops (no chunk starts, running ones stop at their next pass) and is
    finalized as ``expired`` with what completed."""
    with transaction.atomic():
        locked = Batch.objects.select_for_update().get(pk=batch_id)
        if locked.stop or locked.status not in (Batch.Status.VALIDATING, Batch.Status.IN_PROGRESS):
            return
        locked.stop = "expire"
        if locked.status == Batch.Status.VALIDATING:
            locked.status, locked.expired_at = Batch.Status.EXPIRED, timezone.now()
        locked.save(update_fields=["stop", "status", "expired_at"])
    batch_advance(batch_id=batch_id)


def _lost_chunks(now: datetime) -> list[BatchChunk]:
    """Sent chunks that will not finish: sent ``BATCH_CHUNK_RESEND_SECONDS`` ago; or claimed by a
    worker that is no longer alive (by heartbeat, `config.heartbeats`; Redis would give the message
    back only after ``EMBEDDINGS_VISIBILITY_TIMEOUT``); or never claimed although the queue has been
    empty `UNCLAIMED_GRACE_SECONDS` after sending (kombu's Redis transport pops a message before it
    records it: a worker killed in between took it with it)."""
    import redis
    from kombu.exceptions import OperationalError

    from config import heartbeats
    from embeddings.dispatch import UNCLAIMED_GRACE_SECONDS, queue_depth

    sent = list(BatchChunk.objects.filter(state=BatchChunk.State.SENT, batch__status__in=RUNNING))
    stale = now - timedelta(seconds=settings.BATCH_CHUNK_RESEND_SECONDS)
    lost = [c for c in sent if c.sent_at < stale]
    rest = [c for c in sent if c.sent_at >= stale and c.task_id]
    try:
        alive = heartbeats.worker_keys_alive()
        owners = heartbeats.chunk_owners([c.task_id for c in rest])
        empty = None if all(owners) else queue_depth(settings.BATCH_QUEUE) == 0
    except (redis.RedisError, OperationalError):
        return lost
    unclaimed_before = now - timedelta(seconds=UNCLAIMED_GRACE_SECONDS)
    return lost + [c for c, owner in zip(rest, owners)
                   if (owner is not None and owner not in alive)
                   or (owner is None and empty and c.sent_at < unclaimed_before)]


# The steps of a batch that run once each, claimed by their batch (`step_claim_id`).
STEP_TASKS = ("batches.validate", "batches.finalize")


def step_claim_id(task: str, batch_id: int) -> str:
    """What a worker's claim of a batch's step (``batches.validate``, ``batches.finalize``) is
    recorded under (`config.heartbeats.chunk_claim`): the step and its batch."""
    return f"{task}:{batch_id}"


def _lost_steps(batches: list[Batch]) -> list[Batch]:
    """Of ``batches`` (validating or finalizing, their step sent under ``BATCH_CHUNK_RESEND_SECONDS``
    ago), those whose step a worker took and that worker is no longer alive (by heartbeat): without
    this, Redis gives the message back only after ``EMBEDDINGS_VISIBILITY_TIMEOUT`` (a probe's
    batch stayed ``validating`` 307 s after its worker was killed)."""
    import redis

    from config import heartbeats

    if not batches:
        return []
    try:
        owners = heartbeats.chunk_owners([step_claim_id(_step_of(b), b.pk) for b in batches])
        alive = heartbeats.worker_keys_alive()
    except redis.RedisError:
        return []
    return [b for b, owner in zip(batches, owners) if owner is not None and owner not in alive]


def _step_of(batch: Batch) -> str:
    return "batches.validate" if batch.status == Batch.Status.VALIDATING else "batches.finalize"


def batches_tick(*, now: datetime | None = None) -> None:
    """Beat's periodic task (every ``BATCH_TICK_SECONDS``): expire batches past ``expires_at``; send
    again the chunks that were lost (`_lost_chunks`: a dead worker's, a lost message) and the
    validations and finalizations sent ``BATCH_CHUNK_RESEND_SECONDS`` ago and not done or taken by a
    worker no longer alive (`_lost_steps`; every step is idempotent); delete expired files."""
    from config import heartbeats

    now = now or timezone.now()
    for batch_id in Batch.objects.filter(status__in=[Batch.Status.VALIDATING, Batch.Status.IN_PROGRESS], stop="",
                                         expires_at__lte=now).values_list("pk", flat=True):
        batch_expire(batch_id=batch_id)
    stale = now - timedelta(seconds=settings.BATCH_CHUNK_RESEND_SECONDS)
    for chunk in _lost_chunks(now):
        task_id = str(uuid.uuid4())
        if BatchChunk.objects.filter(pk=chunk.pk, state=BatchChunk.State.SENT, task_id=chunk.task_id) \
                .update(sent_at=now, task_id=task_id):
            logger.warning("Batch chunk %s/%d was lost with its worker or message; sending it again",
                           chunk.batch_id, chunk.index)
            task_send("batches.run_chunk", chunk.batch_id, chunk.index, task_id=task_id)
    steps = Batch.objects.filter(Q(status=Batch.Status.VALIDATING) | Q(finalizing_at__isnull=False, status__in=RUNNING))
    lost = [*steps.filter(dispatched_at__lt=stale), *_lost_steps(list(steps.filter(dispatched_at__gte=stale)))]
    for batch in lost:
        if Batch.objects.filter(pk=batch.pk, dispatched_at=batch.dispatched_at).update(dispatched_at=now):
            step = _step_of(batch)
            logger.warning("Batch %s: %s was lost with its worker or message; sending it again", batch.pk, step)
            heartbeats.chunk_unclaim(step_claim_id(step, batch.pk))  # the dead worker's claim
            task_send(step, batch.pk)
    files.files_delete_expired(now=now)
