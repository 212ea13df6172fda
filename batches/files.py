"""Files of the Batch API (``/v1/files``, OpenAI's File object): writes and reads.

Bytes live in Django's storage ``batch_files`` (`settings.STORAGES`; the filesystem under
``VAR_DIR/files`` by default, any django-storages backend by settings), always streamed: an
upload arrives as Django's ``UploadedFile`` (spooled to disk past 2.5 MB) and is copied in
chunks; content is read as a stream. Every lookup is scoped to a project, so another project's
file is a 404. Limits (settings): ``BATCH_FILE_MAX_BYTES`` per file, ``BATCH_STORAGE_QUOTA_BYTES``
per organization; files are deleted ``BATCH_FILE_RETENTION_SECONDS`` after their creation (or at
their ``expires_after``) by beat (`files_delete_expired`).
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.core.files.storage import storages
from django.db import transaction
from django.db.models import Q, Sum
from django.utils import timezone

from accounts.models import Organization
from config.errors import InvalidRequestError, NotFoundError

from .models import File

logger = logging.getLogger(__name__)

# OpenAI: "expires_after.seconds must be between 3600 (1 hour) and 2592000 (30 days)".
EXPIRES_AFTER_RANGE = (3600, 2_592_000)
# What /v1/files takes: purpose batch only (this platform's one use of files).
PURPOSES = ("batch",)


def storage():
    """The storage of batch files (``STORAGES["batch_files"]``)."""
    return storages["batch_files"]


def _storage_name(organization_public_id: str, file_public_id: str) -> str:
    return f"{organization_public_id}/{file_public_id}.jsonl"


def file_create(*, key, upload, purpose: str, filename: str | None = None,
                expires_after_seconds: int | None = None) -> File:
    """Store ``upload`` (a Django ``File``/``UploadedFile``, read in chunks) as a file of the key's
    project, purpose ``batch`` (or ``batch_output`` when ``purpose`` says so: the batches' own
    output). ``key``: an `accounts.selectors.ResolvedKey`, or anything with ``organization_id``,
    ``organization_public_id`` and ``project_id``.

    Raises `InvalidRequestError` (400): a purpose other than ``batch`` (``invalid_value``), a file
    over ``BATCH_FILE_MAX_BYTES`` (``file_too_large``) or empty (``empty_file``), ``expires_after``
    outside OpenAI's range, or the organization's ``BATCH_STORAGE_QUOTA_BYTES`` exceeded
    (``storage_quota_exceeded``).
    """
    if purpose not in (*PURPOSES, File.Purpose.BATCH_OUTPUT):
        raise InvalidRequestError(f"Invalid value for 'purpose': {purpose!r}. Supported values are: 'batch'.",
                                  param="purpose", code="invalid_value")
    size = upload.size
    if size > settings.BATCH_FILE_MAX_BYTES:
        raise InvalidRequestError(f"File is too large: {size} bytes; the limit is {settings.BATCH_FILE_MAX_BYTES} "
                                  "bytes.", param="file", code="file_too_large")
    if not size and purpose != File.Purpose.BATCH_OUTPUT:
        raise InvalidRequestError("The file is empty.", param="file", code="empty_file")
    if expires_after_seconds is not None and not EXPIRES_AFTER_RANGE[0] <= expires_after_seconds \
            <= EXPIRES_AFTER_RANGE[1]:
        raise InvalidRequestError("'expires_after[seconds]' must be between 3600 and 2592000.",
                                  param="expires_after", code="invalid_value")
    now = timezone.now()
    row = File(organization_id=key.organization_id, project_id=key.project_id, purpose=purpose,
               filename=(filename or getattr(upload, "name", "") or "file.jsonl")[-255:], bytes=size, created_at=now,
               expires_at=now + timedelta(seconds=expires_after_seconds or settings.BATCH_FILE_RETENTION_SECONDS))
    row.storage_name = storage().save(_storage_name(key.organization_public_id, row.public_id), upload)
    try:
        with transaction.atomic():
            # One organization's uploads take turns here, so concurrent ones cannot pass the quota together.
            Organization.objects.select_for_update().filter(pk=key.organization_id).first()
            used = File.objects.filter(organization_id=key.organization_id).aggregate(n=Sum("bytes"))["n"] or 0
            if purpose != File.Purpose.BATCH_OUTPUT and used + size > settings.BATCH_STORAGE_QUOTA_BYTES:
                raise InvalidRequestError(
                    f"The organization's file storage is full: {used} of {settings.BATCH_STORAGE_QUOTA_BYTES} bytes "
                    f"used, this file has {size}. Delete files to make room.", param="file",
                    code="storage_quota_exceeded")
            row.save()
    except BaseException:
        storage().delete(row.storage_name)
        raise
    return row


def file_get(*, project_id: int, public_id: str) -> File:
    """The file ``public_id`` of the project; `NotFoundError` (404) when it is not one of its files."""
    row = File.objects.filter(project_id=project_id, public_id=public_id).first()
    if row is None:
        raise NotFoundError(f"No such File object: {public_id}", param="id", code="not_found")
    return row


def files_list(*, project_id: int, purpose: str | None = None, after: str | None = None, limit: int = 10000,
               order: str = "desc") -> tuple[list[File], bool]:
    """The project's files, newest first (``order="desc"``, OpenAI's default) or oldest first,
    starting after the file ``after`` (a cursor: its public id), at most ``limit``; returns
    ``(files, has_more)``."""
    rows = File.objects.filter(project_id=project_id)
    if purpose:
        rows = rows.filter(purpose=purpose)
    ordering = ("-created_at", "-pk") if order == "desc" else ("created_at", "pk")
    if after:
        cursor = File.objects.filter(project_id=project_id, public_id=after).values("created_at", "pk").first()
        if cursor is not None:
            sign = "lt" if order == "desc" else "gt"
            rows = rows.filter(Q(**{f"created_at__{sign}": cursor["created_at"]})
                               | Q(created_at=cursor["created_at"], **{f"pk__{sign}": cursor["pk"]}))
    page = list(rows.order_by(*ordering)[:limit + 1])
    return page[:limit], len(page) > limit


def file_open(file: File):
    """The file's content as a binary stream (the caller closes it)."""
    return storage().open(file.storage_name, "rb")


def file_delete(*, file: File) -> None:
    """Delete the file: its bytes, then its row. Raises `InvalidRequestError` (400 ``file_in_use``)
    while a batch that has not finished reads it."""
    from .models import Batch

    if Batch.objects.filter(input_file_id=file.public_id).exclude(status__in=Batch.TERMINAL).exists():
        raise InvalidRequestError(f"File {file.public_id} is the input of a batch that has not finished; cancel "
                                  "the batch or wait for it first.", param="file_id", code="file_in_use")
    storage().delete(file.storage_name)
    file.delete()


def files_delete_expired(*, now: datetime | None = None) -> int:
    """Delete every file whose ``expires_at`` has passed (inputs of unfinished batches are kept until
    those finish); returns how many were deleted. Beat's tick runs it."""
    from .models import Batch

    now = now or timezone.now()
    busy = Batch.objects.exclude(status__in=Batch.TERMINAL).values("input_file_id")
    deleted = 0
    for row in File.objects.filter(expires_at__lte=now).exclude(public_id__in=busy).iterator():
        storage().delete(row.storage_name)
        row.delete()
        deleted += 1
    if deleted:
        logger.info("Deleted %d expired batch files", deleted)
    return deleted
