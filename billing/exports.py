"""Statement exports (CSV, JSON) for the console and ``manage.py billing_statement``.

The rows are the statement's stored lines, so a closed statement exports the same
bytes forever. Money is written as decimal strings (never floats).
"""
from __future__ import annotations

import csv
import io

from billing.models import Statement

CSV_COLUMNS = ["organization_id", "period", "kind", "usage_period", "project_id", "project_name", "model",
               "price_effective_from", "unit_price_per_million_tokens", "currency", "num_model_requests",
               "input_tokens", "amount"]


def statement_export_rows(statement: Statement) -> list[dict]:
    """One dict per line (keys: `CSV_COLUMNS`), in the statement's line order."""
    lines = statement.lines.select_related("project", "model").order_by(
        "kind", "usage_period_start", "project__public_id", "model__name", "price_effective_from")
    org_id = statement.organization.public_id
    return [{
        "organization_id": org_id,
        "period": f"{statement.period_start:%Y-%m}",
        "kind": line.kind,
        "usage_period": f"{line.usage_period_start:%Y-%m}",
        "project_id": line.project.public_id,
        "project_name": line.project.name,
        "model": line.model.name,
        "price_effective_from": line.price_effective_from.isoformat(),
        "unit_price_per_million_tokens": str(line.unit_price),
        "currency": statement.currency,
        "num_model_requests": line.num_model_requests,
        "input_tokens": line.input_tokens,
        "amount": str(line.amount),
    } for line in lines]


def statement_export_csv(statement: Statement) -> str:
    """The statement's lines as CSV text (header `CSV_COLUMNS`, one row per line)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(statement_export_rows(statement))
    return out.getvalue()


def statement_export_json(statement: Statement) -> dict:
    """The statement as a JSON-ready dict: header fields, ``total_amount`` and ``lines``."""
    return {
        "object": "billing.statement",
        "organization_id": statement.organization.public_id,
        "organization_name": statement.organization.name,
        "period": f"{statement.period_start:%Y-%m}",
        "status": statement.status,
        "currency": statement.currency,
        "total_amount": str(statement.total_amount),
        "closed_at": statement.closed_at.isoformat() if statement.closed_at else None,
        "lines": statement_export_rows(statement),
    }
