"""No API key in any log line: every log record has its ``sk-...`` tokens masked.

A filter on the root logger would not do: Python runs a logger's filters only for records
logged on that logger, not for those propagated from its children (``django.request``,
``granian.access``, ``celery``...), and handlers configured elsewhere (the HTTP server's)
have filters of their own. So the redaction sits in the log record factory, which builds
every record of every logger of the process: the message (with its arguments applied) and
any exception text are redacted once, when the record is made.
"""
from __future__ import annotations

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
