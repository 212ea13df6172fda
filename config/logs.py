"""No API key in any log line: every log record has its ``sk-...`` tokens masked.

A filter on the root logger would not do: Python runs a logger's filters only for records
logged on that logger, not for those propagated from its children (``django.request``,
``granian.access``, ``celery``...), and handlers configured elsewhere (the HTTP server's)
have filters of their own. So the redaction sits in the log record factory, which builds
every record of every logger of the process: the message (with its arguments applied) and
any exception text are redacted once, when the record is made.
"""
from __future__ import annotations

import contextvars
import logging
import re
import traceback

# OpenAI-style secret keys: ``sk-`` then the key's characters (ours: ``sk-proj-`` + base62;
# admin keys ``sk-admin-``), as OpenAI documents them.
# Invitation links (``/console/invitations/inv-...``) are bearer secrets too.
SECRET_RE = re.compile(r"\b(sk|inv)-[A-Za-z0-9_-]+")


def redact(text: str) -> str:
    """``text`` with every ``sk-...`` (API key) and ``inv-...`` (invitation token) replaced by
    ``sk-***`` / ``inv-***``."""
    return SECRET_RE.sub(lambda match: f"{match.group(1)}-***", text)


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Mask secrets in ``record`` in place: its formatted message becomes ``msg`` (``args``
    emptied) and its exception text is formatted now and masked. Returns the record."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string: keep the raw parts, masked
        message = f"{record.msg} {record.args!r}"
    if SECRET_RE.search(message):
        record.msg, record.args = redact(message), ()
    if record.exc_info and not record.exc_text:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        record.exc_text = redact(text)
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


def install_secret_redaction() -> None:
    """Make every log record of this process go through `redact_record` (idempotent)."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacts_secrets", False):
        return

    def make_record(*args, **kwargs) -> logging.LogRecord:
        return redact_record(factory(*args, **kwargs))

    make_record.redacts_secrets = True
    logging.setLogRecordFactory(make_record)


# --- Structured logs: one JSON object per line, with the request's identity -----------------------
#
# ``LOG_FORMAT`` (environment): ``json`` (default: what log shippers read) or ``text`` (the plain
# ``time level logger message`` lines, for a terminal). Every record passes `RequestContextFilter`,
# which adds the fields of the request (or chunk) being served by this thread, read from a context
# variable: ``request_id``, ``organization`` and ``project`` (public ids), ``key_id`` (the key's
# public id, never the key), ``model``; and ``process`` (the platform role, ``PLATFORM_PROCESS``).
# Never logged: inputs, vectors, the ``user`` field's value (no code passes them to a logger).

LOG_FORMAT_ENV = "LOG_FORMAT"
REQUEST_ID_RE = re.compile(r"req_[0-9a-f]{32}")  # config.middleware.new_request_id
PROCESS_ENV = "PLATFORM_PROCESS"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def log_format(environ: dict | None = None) -> str:
    """``"json"`` or ``"text"``, from ``LOG_FORMAT`` in ``environ`` (default ``os.environ``; unset:
    ``json``); raises `ValueError` for anything else, so a typo stops the start instead of silently
    changing the format."""
    import os

    value = ((os.environ if environ is None else environ).get(LOG_FORMAT_ENV) or "json").strip().lower()
    if value not in ("json", "text"):
        raise ValueError(f"{LOG_FORMAT_ENV} must be 'json' or 'text', not {value!r}")
    return value


class RequestLogContext:
    """What every log line written while serving one request (or one worker chunk) carries.

    ``request_id`` (``req_...``), ``model`` (the name the request asked for), ``request`` (the Django
    ``HttpRequest``, whose ``auth`` DRF sets once the key is resolved: the organization, project and
    key public ids are read from it when a line is written, so authentication needs no hook).
    """

    __slots__ = ("request_id", "model", "request")

    def __init__(self, request_id: str = "", model: str = "", request=None):
        self.request_id, self.model, self.request = request_id, model, request

    def fields(self) -> dict[str, str]:
        """The non-empty fields: ``request_id``, ``organization``, ``project``, ``key_id``, ``model``."""
        out = {}
        if self.request_id:
            out["request_id"] = self.request_id
        key = getattr(self.request, "auth", None) if self.request is not None else None
        for field, attribute in (("organization", "organization_public_id"), ("project", "project_public_id"),
                                 ("key_id", "key_public_id")):
            value = getattr(key, attribute, None)
            if value:
                out[field] = value
        if self.model:
            out["model"] = self.model
        return out


_log_context: contextvars.ContextVar[RequestLogContext | None] = contextvars.ContextVar(
    "request_log_context", default=None)
# The variable itself, for code that sets it in another thread (`config.wsgi_pool.WSGIPool`).
log_context_var = _log_context


def log_context() -> RequestLogContext | None:
    """The context of the request (or chunk) this code serves, None outside one."""
    return _log_context.get()


def log_context_start(context: RequestLogContext) -> contextvars.Token:
    """Make ``context`` the current one (this thread or task, and what it starts); returns the token
    for `log_context_end`."""
    return _log_context.set(context)


def log_context_end(token: contextvars.Token) -> None:
    """Restore the context that was current before `log_context_start` returned ``token``."""
    _log_context.reset(token)


def log_context_update(**fields: str) -> None:
    """Set ``request_id`` and/or ``model`` on the current context (nothing outside a request)."""
    context = _log_context.get()
    if context is not None:
        for name, value in fields.items():
            setattr(context, name, value)


class RequestContextFilter(logging.Filter):
    """Adds the current `RequestLogContext`'s fields and ``process`` to every record passing the
    handler it is attached to (never replacing an attribute the record already has). Always passes."""

    def __init__(self, name: str = ""):
        import os

        super().__init__(name)
        self.process_name = os.environ.get(PROCESS_ENV, "")

    def filter(self, record: logging.LogRecord) -> bool:
        if self.process_name and not hasattr(record, "process_name"):
            record.process_name = self.process_name
        context = _log_context.get()
        if context is not None:
            for name, value in context.fields().items():
                if not hasattr(record, name):
                    setattr(record, name, value)
        elif not hasattr(record, "request_id"):
            # Celery's own lines about a task (received, succeeded) pass its ``kwargsrepr`` as
            # ``data["kwargs"]``: for a chunk, the request id it belongs to (embeddings.dispatch).
            data = getattr(record, "data", None)
            kwargs = data.get("kwargs") if isinstance(data, dict) else None
            if isinstance(kwargs, str) and REQUEST_ID_RE.fullmatch(kwargs):
                record.request_id = kwargs
        return True


def _safe(value):
    """A log field's value as JSON can carry it, with secrets masked (`redact`): strings masked,
    lists and dicts walked, a Django request as ``METHOD /path`` (never its query string), any
    other object as its masked ``str``."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): _safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_safe(v) for v in value]
    if hasattr(value, "method") and hasattr(value, "path") and hasattr(value, "META"):
        return f"{value.method} {redact(value.path)}"
    return redact(str(value))


def json_formatter() -> logging.Formatter:
    """python-json-logger's orjson formatter: ``{"time", "level", "logger", "message", ...}`` plus
    every extra attribute of the record (the request's fields, ``process``, the exception as text),
    each value passed through `_safe` (the record factory masks only the message and traceback)."""
    from pythonjsonlogger.orjson import OrjsonFormatter

    class JsonFormatter(OrjsonFormatter):
        def formatException(self, ei):  # noqa: N802 - logging's name
            return redact(super().formatException(ei))

        def formatStack(self, stack_info):  # noqa: N802
            return redact(super().formatStack(stack_info))

        def process_log_record(self, log_data):
            return {key: _safe(value) for key, value in log_data.items()}

    return JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger",
                                        "process_name": "process", "exc_info": "exception"})


def formatter() -> logging.Formatter:
    """The formatter of every handler of the platform's processes: JSON or text (`log_format`)."""
    return json_formatter() if log_format() == "json" else logging.Formatter(TEXT_FORMAT)


def logging_config(level: str = "INFO") -> dict:
    """Django's ``LOGGING`` (dictConfig): one stream handler on the root logger with
    `RequestContextFilter` and `formatter`."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_context": {"()": "config.logs.RequestContextFilter"}},
        "formatters": {"platform": {"()": "config.logs.formatter"}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "platform",
                                 "filters": ["request_context"]}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.request": {"level": "ERROR"},
            "django_redis.cache": {"level": "WARNING"},
        },
    }


def granian_logging_config() -> dict:
    """The HTTP server's own loggers (``_granian``: start, workers; the access log is ours,
    `config.asgi`) through the same handler as `logging_config`, for ``granian --log-config``."""
    config = logging_config()
    config["handlers"]["console"]["stream"] = "ext://sys.stdout"
    config["loggers"] = {"_granian": {"handlers": ["console"], "level": "INFO", "propagate": False},
                         "granian.access": {"handlers": ["console"], "level": "INFO", "propagate": False}}
    del config["root"]
    return config
