"""What can go wrong in an embeddings request, in the domain's terms (no HTTP here; as
``django.core.exceptions`` is to Django).

`embeddings.services` raises these (they live in ``config`` so that the one mapping to HTTP,
in `config.errors`, needs no app); `config.errors.openai_exception_handler` is the one place
that maps them to OpenAI's envelope, a status and headers (``Retry-After``). Times are seconds.
"""
from __future__ import annotations


class EmbeddingsError(Exception):
    """Base of the domain errors of an embeddings request."""


class InvalidInput(EmbeddingsError):
    """The request cannot be served as asked: ``message`` (safe to show), the request field at
    fault (``param``) and a stable ``code`` (OpenAI's, e.g. ``context_length_exceeded``)."""

    def __init__(self, message: str, *, param: str | None, code: str):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


class ModelNotAllowed(EmbeddingsError):
    """The key may not use ``model``: the allowlist of its ``scope`` (``project`` or ``key``) does
    not name it."""

    def __init__(self, *, model: str, scope: str):
        super().__init__(f"model {model} not allowed by the {scope}'s allowlist")
        self.model, self.scope = model, scope


class WorkersUnavailable(EmbeddingsError):
    """No worker is alive (by heartbeat, `config.heartbeats`) for the ``queue`` the request needs;
    retry after ``retry_after_s`` (a starting worker shows within one heartbeat interval)."""

    def __init__(self, *, queue: str, retry_after_s: int):
        super().__init__(f"no worker alive for queue {queue}")
        self.queue, self.retry_after_s = queue, retry_after_s


class BrokerUnavailable(EmbeddingsError):
    """The broker (Redis) could not be reached to send the work; retry after ``retry_after_s``."""

    def __init__(self, *, retry_after_s: int):
        super().__init__("broker unreachable")
        self.retry_after_s = retry_after_s


class Overloaded(EmbeddingsError):
    """The ``queue`` holds more than ``EMBEDDINGS_MAX_QUEUE_DEPTH`` chunks (``depth``): the work would
    not finish before its deadline; retry after ``retry_after_s``."""

    def __init__(self, *, queue: str, depth: int, retry_after_s: int):
        super().__init__(f"queue {queue} holds {depth} chunks")
        self.queue, self.depth, self.retry_after_s = queue, depth, retry_after_s


class DeadlineExceeded(EmbeddingsError):
    """The workers did not finish request ``request_id`` within ``timeout_s``."""

    def __init__(self, *, request_id: str, timeout_s: float):
        super().__init__(f"request {request_id} not done within {timeout_s:g} s")
        self.request_id, self.timeout_s = request_id, timeout_s


class WorkerFailed(EmbeddingsError):
    """A worker raised on request ``request_id`` (its log has the cause; the caller never sees it)."""

    def __init__(self, *, request_id: str):
        super().__init__(f"a worker failed on request {request_id}")
        self.request_id = request_id
