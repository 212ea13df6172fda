"""``/metrics`` (config/metrics.py) in this process: who may read it, and what requests add to the
platform's series (requests by endpoint/status/code, tokens and inputs, admission outcomes, the
phases of /v1/embeddings). The same through the README's ``make serve``: test_observability_live.py."""
from __future__ import annotations

import logging
import urllib.error
import urllib.request

import orjson
import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from config.logs import RequestContextFilter, RequestLogContext, json_formatter, log_context_end, log_context_start
from config.metrics import metrics_text, serve_metrics_port
from limits.services import limit_set
from tests.conftest import assert_error, post_embeddings

MODEL = "all-MiniLM-L6-v2"
XFF = "HTTP_X_FORWARDED_FOR"


def samples(text: bytes | str | None = None) -> dict[tuple, float]:
    """``{(sample name, sorted labels): value}`` of a metrics page (default: this process's)."""
    text = metrics_text() if text is None else text
    text = text.decode() if isinstance(text, bytes) else text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def delta(before: dict, after: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


# --- who may read it ---------------------------------------------------------------------------

@pytest.mark.django_db
def test_metrics_answers_loopback_and_the_configured_token_only(settings, created_key):
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    settings.METRICS_TOKEN = "s3cret-metrics-token"
    web = Client()  # REMOTE_ADDR 127.0.0.1
    page = web.get("/metrics")
    assert page.status_code == 200 and page["Content-Type"].startswith("text/plain")
    assert b"embeddings_api_requests_total" in page.content and b"embeddings_queue_depth" in page.content
    # A client behind the trusted proxy is judged by its own address: not loopback.
    assert web.get("/metrics", **{XFF: "203.0.113.7"}).status_code == 403
    # ... unless it has the token.
    assert web.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-metrics-token", **{XFF: "203.0.113.7"}).status_code == 200
    # A wrong token, or a tenant's key, is refused wherever it comes from (loopback included).
    assert web.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong-token").status_code == 403
    assert web.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {created_key.plaintext}").status_code == 403
    assert web.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {created_key.plaintext}", **{XFF: "203.0.113.7"}).status_code == 403
    # A peer that is not loopback, and a header from an untrusted peer claiming loopback.
    assert Client(REMOTE_ADDR="198.51.100.4").get("/metrics").status_code == 403
    assert Client(REMOTE_ADDR="198.51.100.4").get("/metrics", **{XFF: "127.0.0.1"}).status_code == 403


@pytest.mark.django_db
def test_no_token_configured_means_no_bearer_opens_it(settings, created_key):
    settings.METRICS_TOKEN = ""
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 403
    assert Client(REMOTE_ADDR="198.51.100.4").get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 403


@pytest.mark.django_db
def test_a_worker_only_host_serves_the_same_page_on_its_port(settings):
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    settings.METRICS_TOKEN = "port-token"
    server = serve_metrics_port(0)
    base = f"http://127.0.0.1:{server.server_port}"

    def get(path: str, headers: dict | None = None) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers or {}), timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    try:
        status, body = get("/metrics")
        assert status == 200 and b"embeddings_workers_alive" in body
        assert get("/metrics", {"X-Forwarded-For": "203.0.113.7"})[0] == 403
        assert get("/metrics", {"X-Forwarded-For": "203.0.113.7", "Authorization": "Bearer port-token"})[0] == 200
        assert get("/metrics", {"Authorization": "Bearer sk-proj-whatever"})[0] == 403
        assert get("/elsewhere")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


# --- what requests add -------------------------------------------------------------------------

def test_requests_tokens_admission_and_phases_are_counted(client, created_key, project):
    before = samples()
    bodies = [{"model": MODEL, "input": "hello world"}, {"model": MODEL, "input": ["a b c", "the food was good"]}]
    tokens = inputs = 0
    for body in bodies:
        response = post_embeddings(client, body)
        assert response.status_code == 200
        tokens += response.json()["usage"]["total_tokens"]
        inputs += len(response.json()["data"])
    assert_error(post_embeddings(client, {"model": MODEL, "input": "x", "encoding_format": "hex"}), 400,
                 param="encoding_format", code="invalid_value")
    limit_set(organization=project.organization, api_key=created_key.api_key, rpm=0)
    limited = post_embeddings(client, {"model": MODEL, "input": "hello"})
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded"
    after = samples()

    endpoint = "/v1/embeddings"
    assert delta(before, after, "embeddings_api_requests_total", endpoint=endpoint, status="200", code="") == 2
    assert delta(before, after, "embeddings_api_requests_total", endpoint=endpoint, status="400",
                 code="invalid_value") == 1
    assert delta(before, after, "embeddings_api_requests_total", endpoint=endpoint, status="429",
                 code="rate_limit_exceeded") == 1
    assert delta(before, after, "embeddings_tokens_total", model=MODEL, service_tier="default") == tokens
    assert delta(before, after, "embeddings_inputs_total", model=MODEL, service_tier="default") == inputs == 3
    assert delta(before, after, "embeddings_admission_decisions_total", outcome="admitted") == 2
    assert delta(before, after, "embeddings_admission_decisions_total", outcome="rate_limited_requests") == 1
    assert delta(before, after, "embeddings_usage_records_written_total") == 2
    assert delta(before, after, "embeddings_request_duration_seconds_count") == 4
    # Each phase a request reached: the 400 stops at validation, the 429 at admission.
    for name, count in (("auth", 4), ("validation", 4), ("tokenization", 3), ("admission", 3), ("queue_wait", 2),
                        ("encode", 2), ("metering", 2)):
        assert delta(before, after, "embeddings_request_phase_seconds_count", phase=name) == count, name
    assert delta(before, after, "embeddings_engine_tokens_total", model=MODEL) >= tokens
    assert delta(before, after, "embeddings_batch_inputs_count", model=MODEL) >= 1
    # The engine's time in batches covers its forward passes (and the sorting and planning around them).
    busy = delta(before, after, "embeddings_batch_seconds_total", model=MODEL)
    assert busy >= delta(before, after, "embeddings_engine_forward_seconds_total", model=MODEL) > 0
    # Other /v1 routes by their route, unknown paths as one label.
    client.get("/v1/models")
    client.get("/v1/no-such-thing")
    later = samples()
    assert delta(after, later, "embeddings_api_requests_total", endpoint="/v1/models", status="200", code="") == 1
    assert delta(after, later, "embeddings_api_requests_total", endpoint="unknown", status="404",
                 code="unknown_url") == 1


# --- structured logs ---------------------------------------------------------------------------

def test_a_log_line_is_one_json_object_with_the_requests_ids(created_key):
    from accounts.selectors import api_key_resolve

    record = logging.LogRecord("embeddings.services", logging.WARNING, __file__, 1, "slow %s", ("thing",), None)
    request = type("Request", (), {"auth": api_key_resolve(plaintext=created_key.plaintext)})()
    token = log_context_start(RequestLogContext(request_id="req_" + "a" * 32, model=MODEL, request=request))
    try:
        RequestContextFilter().filter(record)
    finally:
        log_context_end(token)
    line = json_formatter().format(record)
    assert "\n" not in line and created_key.plaintext not in line
    data = orjson.loads(line)
    key = created_key.api_key
    assert data["message"] == "slow thing" and data["level"] == "WARNING" and data["logger"] == "embeddings.services"
    assert data["request_id"] == "req_" + "a" * 32 and data["model"] == MODEL
    assert data["organization"] == key.project.organization.public_id
    assert data["project"] == key.project.public_id and data["key_id"] == key.public_id


def test_json_lines_mask_keys_in_every_field(rf):
    """The record factory masks messages and tracebacks; the JSON formatter also masks every extra
    field (Django's ``request`` extra: its method and path only, never the query string)."""
    key = "sk-proj-Abc_123-xyz"
    request = rf.get(f"/v1/models?api_key={key}")
    try:
        raise ValueError(f"bad key {key}")
    except ValueError:
        import sys

        record = logging.getLogger("django.security").makeRecord(
            "django.security", logging.ERROR, __file__, 1, "refused %s", (key,), sys.exc_info(),
            extra={"request": request, "data": {"kwargs": key, "args": [key]}})
    line = json_formatter().format(record)
    assert key not in line and "Abc_123" not in line, line
    data = orjson.loads(line)
    assert data["message"] == "refused sk-***" and data["request"] == "GET /v1/models"
    assert data["data"] == {"kwargs": "sk-***", "args": ["sk-***"]} and "sk-***" in data["exception"]
