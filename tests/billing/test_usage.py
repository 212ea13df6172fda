"""Metering: exactly one UsageRecord per successful request, none for failures."""
from __future__ import annotations

import pytest
from django.db import IntegrityError, connection
from django.test.utils import CaptureQueriesContext

from metering.models import UsageRecord
from metering.services import usage_record_create
from tests.conftest import post_embeddings

MODEL = "all-MiniLM-L6-v2"


def test_n_requests_make_n_records_matching_the_responses(client, created_key, project, default_model):
    inputs = ["one", ["two", "three"], "a longer sentence with several more tokens in it", [[101, 102], [7592]]]
    responses = [post_embeddings(client, {"model": MODEL, "input": i, "user": f"u{n}"}) for n, i in enumerate(inputs)]
    failures = [post_embeddings(client, {"model": MODEL, "input": ""}),
                post_embeddings(client, {"model": "nope", "input": "x"}),
                post_embeddings(client, {"model": MODEL, "input": "word " * 500})]
    assert [r.status_code for r in responses] == [200] * 4
    assert [r.status_code for r in failures] == [400, 404, 400]

    records = {r.request_id: r for r in UsageRecord.objects.all()}
    assert len(records) == 4
    for n, response in enumerate(responses):
        record = records[response["x-request-id"]]
        usage = response.json()["usage"]
        assert record.prompt_tokens == usage["prompt_tokens"]
        assert record.total_tokens == usage["total_tokens"]
        assert record.input_count == len(response.json()["data"])
        assert record.organization_id == project.organization_id
        assert record.project_id == project.pk
        assert record.api_key_id == created_key.api_key.pk
        assert record.model_id == default_model.pk
        assert record.user == f"u{n}"
        assert record.service_tier == "default"
        assert record.latency_ms >= 0
    assert sum(r.total_tokens for r in records.values()) == sum(r.json()["usage"]["total_tokens"] for r in responses)
    for failure in failures:
        assert failure["x-request-id"] not in records


def test_a_request_id_is_metered_once(project, default_model):
    kwargs = dict(request_id="req_dup", organization_id=project.organization_id, project_id=project.pk,
                  api_key_id=None, model_id=default_model.pk, input_count=1, prompt_tokens=3, total_tokens=3,
                  latency_ms=5)
    usage_record_create(**kwargs)
    try:
        usage_record_create(**kwargs)
    except IntegrityError:
        pass
    else:
        raise AssertionError("a second record for the same request id was accepted")


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_a_record_is_one_statement(project, default_model):
    """The API meters in autocommit: the INSERT is its own transaction, one round trip (no BEGIN or
    COMMIT of a block around it); a duplicate still fails and is not written twice."""
    kwargs = dict(request_id="req_one", organization_id=project.organization_id, project_id=project.pk,
                  api_key_id=None, model_id=default_model.pk, input_count=1, prompt_tokens=3, total_tokens=3,
                  latency_ms=5)
    with CaptureQueriesContext(connection) as queries:
        usage_record_create(**kwargs)
    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["INSERT"]
    with pytest.raises(IntegrityError):
        usage_record_create(**kwargs)
    assert UsageRecord.objects.filter(request_id="req_one").count() == 1
