"""The writer of `metering.models.UsageRecord`."""
from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
from django.db import IntegrityError, InterfaceError, OperationalError, connection as thread_connection, transaction

from config.errors import AuthenticationError
from config.metrics import USAGE_RECORDS, phase

from .models import UsageRecord


logger = logging.getLogger(__name__)

# The process's metering thread (`usage_record_written_alongside`): one, with its own database
# connection, used only by a process's lone request, so writes never queue behind each other.
_alongside = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metering")


def _foreign_key_violation(exc: IntegrityError) -> bool:
    return isinstance(exc.__cause__, psycopg.errors.ForeignKeyViolation)


def usage_record_create(*, request_id: str, organization_id: int, project_id: int, api_key_id: int | None,
                        model_id: int, input_count: int, prompt_tokens: int, total_tokens: int,
                        user: str = "", service_tier: str = "default", latency_ms: int,
                        counted: bool = True) -> UsageRecord:
    """Insert the usage record of one successful request (one INSERT, no UPDATE).

    A key deleted while its request was served (its row gone, so the foreign key fails) is
    recorded with ``api_key`` empty, as deleting it a moment later would have left the record
    (``on_delete=SET_NULL``): the project and organization that were served are billed. When
    the project or organization is gone too, nothing can be billed and the request is refused:
    `AuthenticationError` (401), never a 500.

    Raises ``django.db.IntegrityError`` when ``request_id`` was already metered. Timed as the
    request's ``metering`` phase and counted (``embeddings_usage_records_written_total``) unless
    ``counted`` is False (a record written alongside is counted once its request succeeded).
    """
    fields = dict(request_id=request_id, organization_id=organization_id, project_id=project_id,
                  model_id=model_id, input_count=input_count, prompt_tokens=prompt_tokens,
                  total_tokens=total_tokens, user=user, service_tier=service_tier, latency_ms=latency_ms)
    with phase("metering"):
        for key_id in dict.fromkeys([api_key_id, None]):  # as sent, then without a deleted key
            try:
                record = _insert({**fields, "api_key_id": key_id})
            except IntegrityError as exc:
                if not _foreign_key_violation(exc):
                    raise
                missing = exc
            else:
                if counted:
                    USAGE_RECORDS.inc()
                return record
    raise AuthenticationError(
        "The API key used for this request was deleted while the request was served.") from missing


def _insert(fields: dict) -> UsageRecord:
    """One INSERT in its own transaction. Django's foreign keys are DEFERRABLE INITIALLY DEFERRED: a
    missing row is reported when that transaction commits, so it must be the outermost one (the API
    meters outside any transaction); nested, the check would come at the outer commit.

    Outside a transaction (the API: autocommit) the INSERT is sent alone and is its own transaction,
    checked and committed in one round trip instead of three (``BEGIN``, ``INSERT``, ``COMMIT``),
    and it is its own connection health check: Django's (``CONN_HEALTH_CHECKS``, a ``SELECT 1``
    round trip before a reused connection's first statement in a request) is skipped, and an
    INSERT that fails on a dead connection (PostgreSQL restarted, the connection cut) is sent
    again once on a new one, where a record it did write before the connection died is found by
    its ``request_id`` instead (returned, not an ``IntegrityError``). Inside a transaction it runs
    in a savepoint, so a duplicate leaves the caller's transaction usable."""
    connection = transaction.get_connection()
    if connection.in_atomic_block:
        with transaction.atomic():
            return UsageRecord.objects.create(**fields)
    checked = connection.health_check_done or connection.connection is None
    connection.health_check_done = True
    try:
        return UsageRecord.objects.create(**fields)
    except (OperationalError, InterfaceError):
        # Only a kept connection's first statement of a request may have met a stale connection,
        # and only a connection that no longer works is one (not a timeout, not a deadlock).
        if checked or connection.is_usable():
            raise
        connection.close()
    try:
        return UsageRecord.objects.create(**fields)
    except IntegrityError as exc:
        if not isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
            raise
        return UsageRecord.objects.get(request_id=fields["request_id"])


def usage_records_create_many(*, records: list[UsageRecord]) -> None:
    """Insert many usage records (unsaved `UsageRecord` objects) at once, inside the caller's
    transaction (the Batch API meters a chunk's lines in the transaction that writes them, so a
    line is metered exactly when its result is written). Raises ``django.db.IntegrityError`` when
    a ``request_id`` was already metered (the caller's transaction then writes nothing)."""
    UsageRecord.objects.bulk_create(records, batch_size=1000)


@contextlib.contextmanager
def usage_record_written_alongside(*, started_at: float, **fields):
    """Write the usage record of one request (``fields``: `usage_record_create`'s but
    ``latency_ms``) on this process's metering thread while the block runs (the request's
    encode), so the write's round trip and commit (~2 ms, most of it waiting) overlap the encode
    instead of following it; leaving the block waits for the write (the request's ``metering``
    phase is that wait) and raises what `usage_record_create` raises. Used for a process's lone
    request, in autocommit (the thread's connection sees only committed rows).

    The record is committed before the response is sent, as `usage_record_create`'s; what
    changes is that it exists while the request encodes: when the block raises, the record is
    deleted before the error propagates (a request that fails is never billed); when the process
    is killed while the request encodes, the record stays without a response, as one committed
    just before a kill does. ``latency_ms`` is then the time from arrival (``started_at``,
    ``time.perf_counter()``) to the write, its encode not included.
    """
    fields["latency_ms"] = int((time.perf_counter() - started_at) * 1000)
    try:
        write = _alongside.submit(_write_on_the_metering_thread, fields)
    except RuntimeError:  # the interpreter is shutting down: the thread takes no more work
        yield
        usage_record_create(**{**fields, "latency_ms": int((time.perf_counter() - started_at) * 1000)})
        return
    try:
        yield
    except BaseException:
        _discard(write, fields["request_id"])
        raise
    usage_record_written(write)


def usage_record_written(write) -> UsageRecord:
    """Wait for the write `usage_record_written_alongside` started (``write``, a future): the
    request's ``metering`` phase, all that metering costs its latency then."""
    with phase("metering"):
        record = write.result()
    USAGE_RECORDS.inc()
    return record


def _write_on_the_metering_thread(fields: dict) -> UsageRecord:
    thread_connection.close_if_unusable_or_obsolete()  # what a request's start does to its connection
    return usage_record_create(**fields, counted=False)  # counted when its request succeeds


def _discard(write, request_id: str) -> None:
    """Delete the record ``write`` wrote (if it did) on the metering thread, waiting for both (a
    write not started yet is cancelled instead)."""
    if write.cancel():
        return
    try:
        write.result()
    except Exception:  # nothing was written: the request's own error is the one to raise
        return
    try:
        _alongside.submit(_delete_on_the_metering_thread, request_id).result()
    except Exception:
        logger.exception("The usage record of failed request %s could not be deleted: it is billed", request_id)


def _delete_on_the_metering_thread(request_id: str) -> None:
    """Delete the record of ``request_id``; once more on a new connection when the thread's
    connection failed (PostgreSQL restarted, the connection cut since the write): a failed request
    must not stay billed for want of a working connection. Raises what the second try raises."""
    try:
        UsageRecord.objects.filter(request_id=request_id).delete()
    except (OperationalError, InterfaceError):
        thread_connection.close()
        UsageRecord.objects.filter(request_id=request_id).delete()
