"""Statement exports (CSV, JSON) for the console and ``manage.py billing_statement``.

The rows are the statement's stored lines, so a closed statement exports the same
bytes forever; an open month exports the lines of `billing.services.statement_draft`
(computed, not stored). Lines are sorted in Python (kind, usage period, project id,
model, price date), so the order never depends on the database's collation. Money is
written as decimal strings (never floats).

CSV text cells are neutralised against formula injection (`csv_cell`): a project named
``=HYPERLINK(...)`` must not become a live formula when the file is opened in a spreadsheet.
"""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable

from billing.models import Statement, StatementLine

CSV_COLUMNS = ["organization_id", "period", "kind", "usage_period", "project_id", "project_name", "model",
               "service_tier", "price_effective_from", "unit_price_per_million_tokens", "currency", "num_model_requests",
               "input_tokens", "amount"]


# Characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection":
# https://owasp.org/www-community/attacks/CSV_Injection).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def csv_cell(value):
    """``value`` made safe to open in a spreadsheet: a string starting with one of
    `FORMULA_TRIGGERS` gets a leading single quote (OWASP's advice), unless the whole string
    is a plain decimal number (``"-0.02"``, a credit, stays a number). Non-strings are returned
    as they are.
    """
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS) and not _DECIMAL.fullmatch(value):
        return "'" + value
    return value


def _lines(statement: Statement, lines: Iterable[StatementLine] | None) -> list[StatementLine]:
    if lines is None:
        lines = statement.lines.select_related("project", "model")
    return sorted(lines, key=lambda line: (line.kind, line.usage_period_start, line.project.public_id,
                                           line.model.name, line.service_tier, line.price_effective_from))


def statement_export_rows(statement: Statement, lines: Iterable[StatementLine] | None = None) -> list[dict]:
    """One dict per line (keys: `CSV_COLUMNS`), in the statement's line order.

    ``lines``: the lines of an unsaved statement (`billing.services.StatementDraft`);
    by default the statement's stored lines.
    """
    lines = _lines(statement, lines)
    org_id = statement.organization.public_id
    return [{
        "organization_id": org_id,
        "period": f"{statement.period_start:%Y-%m}",
        "kind": line.kind,
        "usage_period": f"{line.usage_period_start:%Y-%m}",
        "project_id": line.project.public_id,
        "project_name": line.project.name,
        "model": line.model.name,
        "service_tier": line.service_tier,
        "price_effective_from": line.price_effective_from.isoformat(),
        "unit_price_per_million_tokens": str(line.unit_price),
        "currency": statement.currency,
        "num_model_requests": line.num_model_requests,
        "input_tokens": line.input_tokens,
        "amount": str(line.amount),
    } for line in lines]


def statement_export_csv(statement: Statement, lines: Iterable[StatementLine] | None = None) -> str:
    """The statement's lines as CSV text (RFC 4180: header `CSV_COLUMNS`, one CRLF-ended row per
    line, text cells through `csv_cell`); ``lines`` as in `statement_export_rows`."""
    out = io.StringIO()
    # RFC 4180's CRLF line ends (the csv module's default): with them a CR inside a name is
    # quoted too, so it cannot start a new row in a spreadsheet (with "\n" it was left bare).
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows({column: csv_cell(value) for column, value in row.items()}
                     for row in statement_export_rows(statement, lines))
    return out.getvalue()


def statement_export_json(statement: Statement, lines: Iterable[StatementLine] | None = None) -> dict:
    """The statement as a JSON-ready dict: header fields, ``total_amount`` and ``lines``
    (``lines`` as in `statement_export_rows`)."""
    return {
        "object": "billing.statement",
        "organization_id": statement.organization.public_id,
        "organization_name": statement.organization.name,
        "period": f"{statement.period_start:%Y-%m}",
        "status": statement.status,
        "currency": statement.currency,
        "total_amount": str(statement.total_amount),
        "closed_at": statement.closed_at.isoformat() if statement.closed_at else None,
        "lines": statement_export_rows(statement, lines),
    }
