"""Metering: exactly one UsageRecord per successful request, none for failures."""
from __future__ import annotations

import pytest
from django.db import IntegrityError, connection
from django.test.utils import CaptureQueriesContext

from config.metrics import USAGE_RECORDS
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


def _record_kwargs(project, default_model, request_id: str) -> dict:
    return dict(request_id=request_id, organization_id=project.organization_id, project_id=project.pk,
                api_key_id=None, model_id=default_model.pk, input_count=1, prompt_tokens=3, total_tokens=3,
                latency_ms=5)


def _new_request_on_a_kept_connection() -> None:
    """What the start of a request does to a kept connection: its health check is due again."""
    connection.ensure_connection()
    assert connection.health_check_enabled  # settings: CONN_HEALTH_CHECKS
    connection.health_check_done = False


@pytest.mark.django_db(transaction=True)
def test_the_insert_is_the_connections_health_check(project, default_model, monkeypatch):
    """No ``SELECT 1`` round trip before the INSERT on a kept connection: the INSERT checks it."""
    _new_request_on_a_kept_connection()
    pings = []
    monkeypatch.setattr(connection, "is_usable", lambda: pings.append(1) or True)
    usage_record_create(**_record_kwargs(project, default_model, "req_unpinged"))
    assert pings == []
    assert UsageRecord.objects.filter(request_id="req_unpinged").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_dead_kept_connection_is_replaced_and_the_record_written_once(project, default_model):
    """PostgreSQL ended the kept connection (a restart, an idle timeout): the INSERT fails on it and
    is sent again on a new one; one record, no error."""
    import psycopg

    _new_request_on_a_kept_connection()
    backend = connection.connection.info.backend_pid
    params = connection.get_connection_params()
    with psycopg.connect(**{k: v for k, v in params.items() if k != "cursor_factory"}, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [backend])
    usage_record_create(**_record_kwargs(project, default_model, "req_after_cut"))
    assert connection.connection.info.backend_pid != backend
    assert UsageRecord.objects.filter(request_id="req_after_cut").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_record_written_before_its_connection_died_is_not_written_twice(project, default_model, monkeypatch):
    """The INSERT committed but its answer was lost with the connection: the second try finds the
    record by its request id (unique) instead of failing or billing twice."""
    from django.db import OperationalError

    _new_request_on_a_kept_connection()
    real_create = UsageRecord.objects.create
    tries = []

    def create_then_lose_the_answer(**fields):
        tries.append(fields["request_id"])
        record = real_create(**fields)
        if len(tries) == 1:
            connection.connection.close()  # the connection dies before the answer arrives
            raise OperationalError("server closed the connection unexpectedly")
        return record

    monkeypatch.setattr(UsageRecord.objects, "create", create_then_lose_the_answer)
    record = usage_record_create(**_record_kwargs(project, default_model, "req_lost_answer"))
    assert tries == ["req_lost_answer", "req_lost_answer"]
    assert record.request_id == "req_lost_answer"
    assert UsageRecord.objects.filter(request_id="req_lost_answer").count() == 1


def _spy_on_record_writes(monkeypatch) -> list[str]:
    """The threads `usage_record_create` runs in, in order."""
    import threading

    import metering.services

    threads = []
    real = metering.services.usage_record_create

    def spy(**fields):
        threads.append(threading.current_thread().name)
        return real(**fields)

    monkeypatch.setattr(metering.services, "usage_record_create", spy)
    monkeypatch.setattr("embeddings.services.usage_record_create", spy)
    return threads


@pytest.mark.django_db(transaction=True)
def test_a_lone_requests_record_is_written_on_the_metering_thread_while_it_encodes(client, monkeypatch):
    """In autocommit (the API), a lone small request's record is written alongside its encode,
    on the process's metering thread; it is there, exact, once the response is."""
    threads = _spy_on_record_writes(monkeypatch)
    written_before = USAGE_RECORDS._value.get()
    response = post_embeddings(client, {"model": MODEL, "input": "metered while encoding"})
    assert response.status_code == 200, response.content
    assert len(threads) == 1 and threads[0].startswith("metering"), threads
    assert USAGE_RECORDS._value.get() == written_before + 1  # counted once, when the request succeeded
    record = UsageRecord.objects.get(request_id=response["x-request-id"])
    assert record.total_tokens == response.json()["usage"]["total_tokens"]


@pytest.mark.django_db(transaction=True)
def test_a_request_whose_encode_fails_after_its_record_was_written_alongside_is_not_billed(client, monkeypatch):
    """The record written alongside is deleted before the error is answered: nothing billed."""
    import threading

    from config.exceptions import WorkersUnavailable

    threads = _spy_on_record_writes(monkeypatch)
    written = threading.Event()
    real_create = UsageRecord.objects.create

    def create_and_signal(**fields):
        record = real_create(**fields)
        written.set()
        return record

    monkeypatch.setattr(UsageRecord.objects, "create", create_and_signal)

    def failing_encode(**kwargs):
        assert written.wait(10)  # the record is committed before the encode fails
        raise WorkersUnavailable(queue="embeddings", retry_after_s=1)

    monkeypatch.setattr("embeddings.services.encode_inputs", failing_encode)
    written_before = USAGE_RECORDS._value.get()
    response = post_embeddings(client, {"model": MODEL, "input": "fails after its record"})
    assert response.status_code == 503, response.content
    assert threads and threads[0].startswith("metering")
    assert not UsageRecord.objects.filter(request_id=response["x-request-id"]).exists()
    assert UsageRecord.objects.count() == 0
    assert USAGE_RECORDS._value.get() == written_before  # embeddings_usage_records_written_total


@pytest.mark.django_db(transaction=True)
def test_a_failed_requests_record_is_deleted_even_when_the_metering_connection_broke(client, monkeypatch):
    """The delete of a failed request's record meets a broken connection (PostgreSQL restarted since
    the write): it is made again on a new one, and nothing is billed."""
    import threading

    from django.db import OperationalError
    from django.db.models.query import QuerySet

    from config.exceptions import WorkersUnavailable

    written = threading.Event()
    real_create, real_delete = UsageRecord.objects.create, QuerySet.delete
    failures = []

    def create_and_signal(**fields):
        record = real_create(**fields)
        written.set()
        return record

    def delete_once_broken(queryset):
        if queryset.model is UsageRecord and not failures:
            failures.append(threading.current_thread().name)
            raise OperationalError("server closed the connection unexpectedly")
        return real_delete(queryset)

    def failing_encode(**kwargs):
        assert written.wait(10)
        raise WorkersUnavailable(queue="embeddings", retry_after_s=1)

    monkeypatch.setattr(UsageRecord.objects, "create", create_and_signal)
    monkeypatch.setattr(QuerySet, "delete", delete_once_broken)
    monkeypatch.setattr("embeddings.services.encode_inputs", failing_encode)
    response = post_embeddings(client, {"model": MODEL, "input": "its delete meets a broken connection"})
    assert response.status_code == 503, response.content
    assert failures and failures[0].startswith("metering")
    assert UsageRecord.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_with_meter_alongside_off_the_record_is_written_after_the_encode_on_the_request_thread(
        client, monkeypatch, settings):
    import threading

    settings.EMBEDDINGS_METER_ALONGSIDE = False
    threads = _spy_on_record_writes(monkeypatch)
    response = post_embeddings(client, {"model": MODEL, "input": "metered after encoding"})
    assert response.status_code == 200
    assert threads == [threading.current_thread().name]
    assert UsageRecord.objects.filter(request_id=response["x-request-id"]).count() == 1


def _connection_used_in_this_request() -> None:
    connection.ensure_connection()
    connection.health_check_done = True


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("connection_state, error", [
    # only a kept connection's first statement of a request may be a stale one's failure
    (_connection_used_in_this_request, "the database is down"),
    # a statement timeout or a deadlock on a working connection is no stale connection
    (_new_request_on_a_kept_connection, "canceling statement due to statement timeout"),
], ids=["checked-connection", "kept-connection-that-works"])
def test_a_failure_that_is_no_stale_connections_is_raised_not_retried(project, default_model, monkeypatch,
                                                                      connection_state, error):
    from django.db import OperationalError

    connection_state()
    calls = []

    def failing(**fields):
        calls.append(1)
        raise OperationalError(error)

    monkeypatch.setattr(UsageRecord.objects, "create", failing)
    with pytest.raises(OperationalError):
        usage_record_create(**_record_kwargs(project, default_model, "req_failing"))
    assert calls == [1]
