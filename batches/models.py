"""The Batch API's rows: `File` (``/v1/files``), `Batch` (``/v1/batches``), and the work of a batch:
`BatchChunk` (one task's lines) and `BatchResult` (one output line, written once).

Shapes and names follow OpenAI's File and Batch objects. Files' bytes live in Django's storage
``batch_files`` (`File.storage_name`), never in the database.
"""
from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils import timezone

from accounts.models import random_token


def _file_id() -> str:
    return f"file-{random_token(24)}"


def _batch_id() -> str:
    return f"batch_{random_token(24)}"


class File(models.Model):
    """An uploaded batch input (``purpose=batch``) or a batch's output or error file
    (``purpose=batch_output``), owned by a project. ``bytes``: its size; ``expires_at``: when beat
    deletes it (`batches.services.files_delete_expired`)."""

    class Purpose(models.TextChoices):
        BATCH = "batch", "Batch input"
        BATCH_OUTPUT = "batch_output", "Batch output"

    public_id = models.CharField(max_length=40, unique=True, default=_file_id, editable=False)
    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="+")
    project = models.ForeignKey("accounts.Project", on_delete=models.CASCADE, related_name="+")
    purpose = models.CharField(max_length=16, choices=Purpose.choices)
    filename = models.CharField(max_length=255)
    bytes = models.PositiveBigIntegerField()
    storage_name = models.CharField(max_length=500)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["project", "created_at"], name="file_project_time"),
                   models.Index(fields=["expires_at"], name="file_expiry")]

    def __str__(self) -> str:
        return f"{self.public_id} ({self.filename})"


class Batch(models.Model):
    """A batch of ``/v1/embeddings`` requests from one input file (OpenAI's Batch object).

    Counts: ``total`` requests in the file, ``completed`` (200) and ``failed`` lines so far;
    ``input_tokens``: tokens of the completed lines (billed); ``enqueued_tokens``: tokens of the
    valid lines (what counts against ``batch_1_day_max_input_tokens`` while the batch runs).
    ``stop``: why the remaining lines will not run (``cancel`` / ``expire``), set when that is
    decided; ``quota_exhausted``: the monthly quota ran out, every later line fails with
    ``insufficient_quota``. ``*_file_id`` and ``input_file_id`` are public ids (the files may
    be deleted while the batch is kept).
    """

    class Status(models.TextChoices):
        VALIDATING = "validating"
        FAILED = "failed"
        IN_PROGRESS = "in_progress"
        FINALIZING = "finalizing"
        COMPLETED = "completed"
        EXPIRED = "expired"
        CANCELLING = "cancelling"
        CANCELLED = "cancelled"

    TERMINAL = (Status.FAILED, Status.COMPLETED, Status.EXPIRED, Status.CANCELLED)

    public_id = models.CharField(max_length=40, unique=True, default=_batch_id, editable=False)
    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="+")
    project = models.ForeignKey("accounts.Project", on_delete=models.CASCADE, related_name="+")
    # Also ON DELETE SET NULL in PostgreSQL itself (batches.0002, config.migration_operations): a
    # migration that recreates this constraint must keep that.
    api_key = models.ForeignKey("accounts.APIKey", null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="+")
    # The creating key's model allowlist when the batch was made: its lines keep obeying it once the
    # key is deleted (while the key exists, its allowlist as it is now applies).
    key_allowed_models = ArrayField(models.CharField(max_length=200), default=list, blank=True)
    input_file_id = models.CharField(max_length=40)
    endpoint = models.CharField(max_length=64)
    completion_window = models.CharField(max_length=8)
    metadata = models.JSONField(null=True, blank=True)
    model = models.ForeignKey("embeddings.EmbeddingModel", null=True, blank=True, on_delete=models.PROTECT,
                              related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.VALIDATING)
    errors = models.JSONField(null=True, blank=True)
    output_file_id = models.CharField(max_length=40, blank=True, default="")
    error_file_id = models.CharField(max_length=40, blank=True, default="")
    total = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    enqueued_tokens = models.PositiveBigIntegerField(default=0)
    stop = models.CharField(max_length=8, blank=True, default="")
    quota_exhausted = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField()
    in_progress_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    # When its validation or finalization task was last sent (beat sends a lost one again).
    dispatched_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["project", "created_at"], name="batch_project_time"),
                   models.Index(fields=["status", "expires_at"], name="batch_status_expiry")]

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    def __str__(self) -> str:
        return f"{self.public_id} ({self.status})"


class BatchChunk(models.Model):
    """Lines ``[start_line, end_line)`` of a batch's input file (bytes ``[start_byte, end_byte)``),
    ``tokens`` real tokens: one Celery task (``batches.run_chunk``). ``state``: ``pending`` (in the
    database only), ``sent`` (queued or running), ``done`` (its results written, once), or
    ``skipped`` (cancelled or expired before it ran)."""

    class State(models.TextChoices):
        PENDING = "pending"
        SENT = "sent"
        DONE = "done"
        SKIPPED = "skipped"

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="chunks")
    index = models.PositiveIntegerField()
    start_line = models.PositiveIntegerField()
    end_line = models.PositiveIntegerField()
    start_byte = models.PositiveBigIntegerField()
    end_byte = models.PositiveBigIntegerField()
    tokens = models.PositiveBigIntegerField()
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    # The Celery task id it was last sent under (its claim, `config.heartbeats.chunk_claim`, names
    # the worker that took it, so beat can send it again when that worker dies).
    task_id = models.CharField(max_length=64, blank=True, default="")
    sent_at = models.DateTimeField(null=True, blank=True)
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["batch", "index"], name="batch_chunk_unique")]
        indexes = [models.Index(fields=["batch", "state"], name="batch_chunk_state")]


class BatchResult(models.Model):
    """The output line of input line ``line`` (0-based) of a batch, as written to its output file
    (``ok``: status 200) or error file: ``data`` is the JSON line's UTF-8 bytes. Unique per (batch,
    line): written exactly once, in the transaction that marks its chunk done. Deleted once the
    files are written."""

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="results")
    line = models.PositiveIntegerField()
    ok = models.BooleanField()
    data = models.BinaryField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["batch", "line"], name="batch_result_unique")]

