"""Every /v1 response that is not a 200 is an OpenAI envelope, with an x-request-id."""
from __future__ import annotations

import logging

import pytest

from rest_framework.test import APIClient

from metering.models import UsageRecord
from tests.conftest import assert_error


def test_malformed_json(client):
    response = client.post("/v1/embeddings", b'{"model": "all-MiniLM-L6-v2", "input": ', content_type="application/json")
    assert_error(response, 400, param=None, code="invalid_json")


def test_invalid_utf8(client):
    response = client.post("/v1/embeddings", b'{"input": "\xff\xfe"}', content_type="application/json")
    assert_error(response, 400, param=None, code="invalid_json")


def test_wrong_content_type(client):
    response = client.post("/v1/embeddings", b"input=hello", content_type="text/plain")
    error = assert_error(response, 415, param=None, code="unsupported_media_type")
    assert error["message"] == "Unsupported Content-Type 'text/plain'. Send the body as application/json."
    # an upload endpoint names what it reads, not JSON (it told a JSON sender to send JSON)
    error = assert_error(client.post("/v1/files", b'{"purpose": "batch"}', content_type="application/json"), 415,
                         param=None, code="unsupported_media_type")
    assert error["message"] == ("Unsupported Content-Type 'application/json'. "
                                "Send the body as multipart/form-data.")


def test_a_compressed_body_is_415_not_read_as_plain(client):
    """RFC 9110 §8.4.1: a content coding the server does not support is 415 (a gzip body was a
    400 invalid_json; ``br`` on a plain body a 200)."""
    import gzip

    body = b'{"model": "all-MiniLM-L6-v2", "input": "hello"}'
    for coding, data in (("gzip", gzip.compress(body)), ("br", body), ("bogus", body)):
        response = client.post("/v1/embeddings", data, content_type="application/json",
                               HTTP_CONTENT_ENCODING=coding)
        error = assert_error(response, 415, param=None, code="unsupported_content_encoding")
        assert f"'{coding}'" in error["message"]
    assert client.post("/v1/embeddings", body, content_type="application/json",
                       HTTP_CONTENT_ENCODING="identity").status_code == 200
    assert UsageRecord.objects.count() == 1
    # a request without a body is not refused for the header
    assert client.get("/v1/models", HTTP_CONTENT_ENCODING="gzip").status_code == 200


def test_form_encoded_body_is_refused(client):
    response = client.post("/v1/embeddings", {"input": "hello", "model": "all-MiniLM-L6-v2"})  # multipart
    assert_error(response, 415, param=None, code="unsupported_media_type")


def test_unknown_v1_url(client):
    error = assert_error(client.get("/v1/nope"), 404, param=None, code="unknown_url")
    assert error["message"] == "Invalid URL (GET /v1/nope)"


def test_unknown_v1_url_without_key_is_still_an_envelope(db):
    assert_error(APIClient().post("/v1/chat/completions"), 404, param=None, code="unknown_url")


def test_method_not_allowed(client):
    assert_error(client.get("/v1/embeddings"), 405, param=None, code="method_not_allowed")
    assert_error(client.delete("/v1/models"), 405, param=None, code="method_not_allowed")


def test_options_is_405_and_shows_no_view_internals(client):
    """DRF answered OPTIONS with its metadata: the views' docstrings (how they work inside)."""
    for path in ("/v1/embeddings", "/v1/models", "/v1/files", "/v1/batches"):
        response = client.options(path)
        assert_error(response, 405, param=None, code="method_not_allowed")
        assert b"description" not in response.content and b"renders" not in response.content, path
        # Allow lists what the resource answers (RFC 9110 §10.2.1): not OPTIONS, a 405 here
        assert "OPTIONS" not in response["Allow"] and response["Allow"], (path, response["Allow"])
    assert client.get("/v1/models")["Allow"] == "GET, HEAD"


def test_body_too_large(client, settings):
    settings.REQUEST_BODY_MAX_BYTES = {**settings.REQUEST_BODY_MAX_BYTES, "/v1/embeddings": 1000}
    response = client.post("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": "x" * 2000}, format="json")
    assert_error(response, 413, param=None, code="request_too_large")
    assert UsageRecord.objects.count() == 0


def post_with_encode_raising(client, monkeypatch, exc: BaseException):
    """``POST /v1/embeddings`` of one input while the encode raises ``exc`` (a fault injected where
    the engine runs, after authentication and admission); the response."""
    from embeddings import services

    def failing(**kwargs):
        raise exc

    monkeypatch.setattr(services, "encode_inputs", failing)
    return client.post("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": "hi"}, format="json")


def test_unexpected_error_is_a_500_envelope_with_request_id_and_no_traceback(client, monkeypatch, caplog):
    """Inject a fault in the engine; the API must answer with the envelope, log the traceback
    server-side, and meter nothing."""
    caplog.set_level(logging.ERROR)
    response = post_with_encode_raising(client, monkeypatch, RuntimeError("CUDA exploded: secret internal detail"))
    error = assert_error(response, 500, param=None, code="internal_error", type="server_error")
    request_id = response["x-request-id"]
    assert request_id in error["message"]
    assert "Traceback" not in response.content.decode() and "secret internal detail" not in response.content.decode()
    assert "CUDA exploded" in caplog.text and request_id in caplog.text
    assert UsageRecord.objects.count() == 0


def test_a_database_outage_is_a_503_to_retry_not_a_500(client, monkeypatch, caplog, settings):
    """PostgreSQL unreachable mid-request (a probe killed the postmaster: 234 answers were 500s
    until it was back): 503 ``service_unavailable`` with ``Retry-After``, as a Redis outage answers,
    logged, and nothing metered."""
    from django.db import OperationalError

    caplog.set_level(logging.WARNING)
    response = post_with_encode_raising(client, monkeypatch, OperationalError(
        "connection failed: No such file or directory (is the server running?)"))
    error = assert_error(response, 503, param=None, code="service_unavailable", type="server_error")
    assert response["Retry-After"] == str(settings.ADMISSION_RETRY_AFTER_SECONDS)
    assert "server running" not in error["message"] and response["x-request-id"] in caplog.text
    assert UsageRecord.objects.count() == 0


def test_a_deadlock_or_a_cancelled_statement_stays_a_500(client, monkeypatch):
    """Only a database that cannot be reached is a 503: a server's error with another SQLSTATE
    (a deadlock, 40P01; a statement timeout, 57014) is a fault to fix, not to retry."""
    import psycopg
    from django.db import OperationalError

    for cause in (psycopg.errors.DeadlockDetected("deadlock detected"),
                  psycopg.errors.QueryCanceled("canceling statement due to statement timeout")):
        error = OperationalError(str(cause))
        error.__cause__ = cause  # as Django's wrapper raises it: ``from`` the driver's error
        response = post_with_encode_raising(client, monkeypatch, error)
        assert_error(response, 500, param=None, code="internal_error", type="server_error")


def test_request_id_on_success_and_on_non_api_pages(client, db):
    assert client.post("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": "hi"},
                       format="json")["x-request-id"].startswith("req_")
    assert APIClient().get("/healthz")["x-request-id"].startswith("req_")
    ids = {client.get("/v1/models")["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


@pytest.mark.parametrize("path", ["/v1/files/file-%00", "/v1/files/file-%00/content", "/v1/batches/batch_%00",
                                  "/v1/organization/projects/proj_%00", "/v1/models/%00"])
def test_a_path_holding_nul_is_a_404_envelope_not_a_database_error(client, path):
    """No id holds NUL (PostgreSQL's text cannot): looking one up failed in the database (a 500)."""
    for method in (client.get, client.delete, client.post):
        assert_error(method(path), 404, param=None, code="unknown_url")


def test_a_path_holding_nul_outside_v1_is_djangos_404(client):
    assert client.get("/console/projects/%00/").status_code == 404
