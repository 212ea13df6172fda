"""Quotas, rate limits and service tiers (real Redis, real Postgres, the real model).

Monthly token quotas are hard (exact reservations, atomically, before inference);
RPM/TPM are token buckets (OpenAI's semantics); 429s carry OpenAI's codes, the
x-ratelimit-* headers and Retry-After; Redis down follows the configured policy.
"""
from __future__ import annotations

import io
import json
import re
import urllib.error
import urllib.request
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.management import CommandError, call_command
from django.core.servers.basehttp import ThreadedWSGIServer
from django.db import IntegrityError, connection, transaction
from django.db.models import Sum
from django.test import override_settings
from django.test.testcases import LiveServerThread
from rest_framework.test import APIClient

from limits.admission import _settler, admission_reconcile, admission_reserve, settles_wait
from limits.checks import monthly_key
from limits.headers import go_duration
from limits.scopes import Scope
from limits.store import admission_backend
from limits.models import Limit
from config.periods import month_bounds
from accounts.selectors import api_key_resolve
from limits.usage import limits_usage_summary
from accounts.services import api_key_create
from limits.services import limit_set
from metering.models import UsageRecord
from tests.conftest import assert_error, post_embeddings

MODEL = "all-MiniLM-L6-v2"
HELLO = {"model": MODEL, "input": "hello world"}  # [CLS] hello world [SEP]: 4 tokens
HELLO_TOKENS = 4
CLOSED_PORT_URL = "redis://127.0.0.1:18499/0"  # nothing listens there (this worktree's port range)


def org_scope(project):
    return Scope("organization", project.organization_id, project.organization.public_id)


def project_scope(project):
    return Scope("project", project.pk, project.public_id)


def counter(scope) -> dict:
    """The monthly counter hash of ``scope`` in the admission store (``{}`` when missing)."""
    from datetime import datetime, timezone

    start, _ = month_bounds(datetime.now(timezone.utc))
    return admission_backend().read([monthly_key(scope, start)])[0]


def used(scope) -> int:
    return int(counter(scope).get("u", -1))


def metered_tokens(**filters) -> int:
    return UsageRecord.objects.filter(**filters).aggregate(t=Sum("total_tokens"))["t"] or 0


@pytest.fixture
def warm(default_model):
    """The model loaded before a timing-sensitive burst (as gunicorn does at worker start), so the
    first request's load time does not let the buckets refill mid-burst."""
    from embeddings.services import warm_up

    warm_up()


def flush_admission_store():
    """FLUSHDB of this worktree's Redis DB only (REDIS_URL names it)."""
    admission_backend().client.flushdb()


# --- Headers ---------------------------------------------------------------------------------------

def test_every_embeddings_response_after_authentication_carries_the_headers(client, project, created_key):
    # No limit anywhere: the dimension is reported as unlimited.
    response = post_embeddings(client, HELLO)
    assert response.status_code == 200
    assert response["x-ratelimit-limit-requests"] == "unlimited"
    assert response["x-ratelimit-remaining-tokens"] == "unlimited"
    assert response["x-ratelimit-reset-tokens"] == "0s"

    limit_set(organization=project.organization, rpm=100, tpm=10_000)
    limit_set(organization=project.organization, project=project, rpm=50)
    limit_set(organization=project.organization, api_key=created_key.api_key, rpm=10)
    response = post_embeddings(client, HELLO)
    assert response.status_code == 200
    # The most constraining applicable limit is reported: the key's 10 RPM; the org's 10,000 TPM.
    assert response["x-ratelimit-limit-requests"] == "10"
    assert response["x-ratelimit-remaining-requests"] == "9"
    assert re.fullmatch(r"5\.\d+s|6s", response["x-ratelimit-reset-requests"])
    assert response["x-ratelimit-limit-tokens"] == "10000"
    assert 10_000 - HELLO_TOKENS <= int(response["x-ratelimit-remaining-tokens"]) <= 10_000

    # An error after authentication counts one request (RPM), no tokens (issue 11, item 2).
    bad = post_embeddings(client, {"model": MODEL, "input": ""})
    assert_error(bad, 400, param="input", code=bad.json()["error"]["code"])
    assert bad["x-ratelimit-remaining-requests"] == "8"
    assert 10_000 - HELLO_TOKENS <= int(bad["x-ratelimit-remaining-tokens"]) <= 10_000
    # No key, no headers (nothing to report on).
    client.credentials()
    assert "x-ratelimit-limit-requests" not in post_embeddings(client, HELLO)


def test_go_duration_matches_openais_reset_format():
    assert [go_duration(ms) for ms in (0, 0.2, 20, 999, 1000, 1500, 6_000, 60_000, 360_000, 3_723_000)] == \
        ["0s", "1ms", "20ms", "999ms", "1s", "1.5s", "6s", "1m0s", "6m0s", "1h2m3s"]


# --- RPM / TPM windows ------------------------------------------------------------------------------

def test_rpm_and_tpm_the_limit_plus_first_request_is_rejected_and_passes_after_the_announced_reset(
        client, project, created_key, warm):
    # Buckets refill continuously (limit units per 60 s, OpenAI's semantics); limits this small
    # refill too slowly to matter during a burst, so the (limit+1)-th request is rejected.
    tpm_key = api_key_create(project=project, name="tpm")
    limit_set(organization=project.organization, api_key=created_key.api_key, rpm=5)
    limit_set(organization=project.organization, api_key=tpm_key.api_key, tpm=5 * HELLO_TOKENS)
    tpm_client = APIClient()
    tpm_client.credentials(HTTP_AUTHORIZATION=f"Bearer {tpm_key.plaintext}")

    remaining = [post_embeddings(client, HELLO)["x-ratelimit-remaining-requests"] for _ in range(5)]
    assert remaining == ["4", "3", "2", "1", "0"]
    rpm_rejected = post_embeddings(client, HELLO)
    rpm_rejected_at = time.monotonic()
    error = assert_error(rpm_rejected, 429, param=None, code="rate_limit_exceeded", type="requests")
    assert f"key {created_key.api_key.public_id}" in error["message"]
    assert "requests per min (RPM): Limit 5, Used 5, Requested 1" in error["message"]
    assert rpm_rejected["x-ratelimit-remaining-requests"] == "0"
    # One request comes back every 12 s (counted from the first of the burst); the bucket is full
    # again in about a minute.
    assert 0 < int(rpm_rejected["retry-after-ms"]) <= 12_000
    assert int(rpm_rejected["Retry-After"]) == -(-int(rpm_rejected["retry-after-ms"]) // 1000)
    assert re.fullmatch(r"(5\d(\.\d+)?s|1m0s)", rpm_rejected["x-ratelimit-reset-requests"])

    remaining = [int(post_embeddings(tpm_client, HELLO)["x-ratelimit-remaining-tokens"]) for _ in range(5)]
    # Tokens trickle back at 20/60 per second: less than one request's worth during the burst.
    assert all(n * HELLO_TOKENS <= r < (n + 1) * HELLO_TOKENS for n, r in zip(range(4, -1, -1), remaining))
    tpm_rejected = post_embeddings(tpm_client, HELLO)
    tpm_rejected_at = time.monotonic()
    error = assert_error(tpm_rejected, 429, param=None, code="rate_limit_exceeded", type="tokens")
    assert f"key {tpm_key.api_key.public_id}" in error["message"]
    assert re.search(r"tokens per min \(TPM\): Limit 20, Used (17|18|19|20), Requested 4", error["message"])
    assert 0 < int(tpm_rejected["retry-after-ms"]) <= 12_000

    assert UsageRecord.objects.count() == 10  # the rejected requests reserved and metered nothing
    assert used(project_scope(project)) == 10 * HELLO_TOKENS

    # Wait exactly as long as each 429 announced, then the request passes.
    for rejected, at, api in ((rpm_rejected, rpm_rejected_at, client), (tpm_rejected, tpm_rejected_at, tpm_client)):
        time.sleep(max(0.0, at + int(rejected["retry-after-ms"]) / 1000 - time.monotonic()))
        passed = post_embeddings(api, HELLO)
        assert passed.status_code == 200, passed.content
    assert passed["x-ratelimit-remaining-tokens"] == "0"

    # A request larger than the whole bucket can never pass: 429 without Retry-After.
    too_large = post_embeddings(tpm_client, {"model": MODEL, "input": "word " * 30})
    error = assert_error(too_large, 429, param=None, code="rate_limit_exceeded", type="tokens")
    assert error["message"].startswith("Request too large") and "Retry-After" not in too_large


def test_a_lowered_rate_limit_holds_back_at_most_one_minute_of_its_own_rate(client, project, created_key, warm):
    """Use counted under a higher limit is capped at the new limit: a bucket of L refilling at L per
    minute is full again within 60 s (README: ``reset`` = the time until the bucket is full), not in
    used / L minutes (here 20 x 4 tokens at TPM 4: 20 minutes, before the cap)."""
    limit_set(organization=project.organization, api_key=created_key.api_key, rpm=1000, tpm=100_000)
    for _ in range(20):
        assert post_embeddings(client, HELLO).status_code == 200
    limit_set(organization=project.organization, api_key=created_key.api_key, rpm=1, tpm=HELLO_TOKENS)

    rejected = post_embeddings(client, HELLO)
    error = assert_error(rejected, 429, param=None, code="rate_limit_exceeded", type="requests")
    assert "Limit 1, Used 1, Requested 1" in error["message"]
    assert 0 < int(rejected["retry-after-ms"]) <= 60_000, rejected["retry-after-ms"]
    for dimension in ("requests", "tokens"):
        assert re.fullmatch(r"(\d+(\.\d+)?s|1m0s)", rejected[f"x-ratelimit-reset-{dimension}"]), dimension
    assert rejected["x-ratelimit-remaining-requests"] == "0"


def test_a_capped_bucket_empties_as_its_429_says_and_a_refund_keeps_the_others_use(db, settings):
    """The store itself (`limits.store.ADMISSION_LUA`), at a rate a test can wait for (600 per minute:
    10 per second). A lowered limit caps the level and writes it back, so waiting the announced
    retry admits (reading the cap without writing it back refused again: the stored use still
    drained at the new rate). A refund of a reservation made under a lower limit than today's
    subtracts its cost from the level as it is (capping it to the old limit first erased the
    use of everything admitted since the raise)."""
    import uuid

    backend = admission_backend()
    bucket = f"{settings.ADMISSION_KEY_PREFIX}:b:test:{uuid.uuid4().hex}:tpm"
    try:
        assert backend.run("reserve", [bucket], 0, [100_000, 5_000, ""])[0] == "ok"
        rejected = backend.run("reserve", [bucket], 0, [600, 6, ""])
        assert rejected[0] == "rejected" and float(rejected[3]) == 600, rejected
        retry_ms = float(rejected[2])
        assert 590 <= retry_ms <= 600, rejected  # 6 units at 10 per second
        time.sleep(retry_ms / 1000 + 0.05)
        assert backend.run("reserve", [bucket], 0, [600, 6, ""])[0] == "ok"

        backend.delete([bucket])
        assert backend.run("reserve", [bucket], 0, [1, 1, ""])[0] == "ok"  # in flight, under limit 1
        assert backend.run("reserve", [bucket], 0, [100_000, 500, ""])[0] == "ok"  # after a raise
        backend.run("refund", [bucket], 0, [1, 1, ""])  # the first fails: refunded under its limit
        level = float(backend.run("reserve", [bucket], 0, [100_000, 0, ""])[3])
        assert 499 <= level <= 500, level
    finally:
        backend.delete([bucket])


# --- Monthly quota: never overshot ------------------------------------------------------------------

class _WideServer(ThreadedWSGIServer):
    request_queue_size = 128  # Django's test server accepts 10 pending connections; 64 arrive at once


class _WideLiveServerThread(LiveServerThread):
    server_class = _WideServer


@pytest.fixture
def wide_live_server(transactional_db):
    """A live server (threads, like pytest-django's) whose listen queue takes 64 connections at once."""
    from django.contrib.staticfiles.handlers import StaticFilesHandler

    thread = _WideLiveServerThread("127.0.0.1", StaticFilesHandler)
    thread.daemon = True
    thread.start()
    thread.is_ready.wait()
    if thread.error:
        raise thread.error
    yield f"http://127.0.0.1:{thread.port}"
    thread.terminate()


@pytest.mark.django_db(transaction=True)
def test_64_concurrent_requests_against_a_quota_that_fits_exactly_n(wide_live_server, created_key, default_model,
                                                                    project):
    n = 20
    limit_set(organization=project.organization, monthly_tokens=10_000)
    limit_set(organization=project.organization, project=project, monthly_tokens=n * HELLO_TOKENS)
    # Key and limits cached, counters built (and the reservation given back) before the burst, so
    # only the requests that are admitted need a database connection (the Postgres these tests
    # share has few to spare).
    admission_reserve(key=api_key_resolve(plaintext=created_key.plaintext), tokens=1, service_tier="default").refund()
    url = f"{wide_live_server}/v1/embeddings"
    headers = {"Authorization": f"Bearer {created_key.plaintext}"}
    start = threading.Barrier(64)

    def call(_):
        request = urllib.request.Request(url, data=json.dumps(HELLO).encode(), method="POST",
                                         headers={**headers, "Content-Type": "application/json"})
        start.wait()
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, dict(response.headers), json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), json.loads(error.read())

    with ThreadPoolExecutor(64) as pool:
        responses = list(pool.map(call, range(64)))

    statuses = sorted(status for status, _, _ in responses)
    assert statuses == [200] * n + [429] * (64 - n)
    for status, headers, body in responses:
        if status == 429:
            error = body["error"]
            assert (error["code"], error["type"]) == ("insufficient_quota", "insufficient_quota")
            assert f"project {project.public_id}" in error["message"] and "monthly_tokens" in error["message"]
            assert int(headers["Retry-After"]) > 0
    assert metered_tokens(project=project) == n * HELLO_TOKENS <= Limit.objects.get(project=project).monthly_tokens
    assert used(project_scope(project)) == n * HELLO_TOKENS
    settles_wait()  # settles run after their responses
    assert int(counter(project_scope(project))["r"]) == 0  # nothing left in flight


def test_a_failed_request_after_admission_leaves_the_counters_where_they_were(client, project, monkeypatch):
    limit_set(organization=project.organization, project=project, rpm=2, tpm=2 * HELLO_TOKENS, monthly_tokens=1000)
    assert post_embeddings(client, HELLO).status_code == 200
    settles_wait()  # its settle runs after its response
    before = (counter(org_scope(project)), counter(project_scope(project)))

    from embeddings import services

    def broken_encode(**kwargs):  # a fault in the encode step, after admission
        raise RuntimeError("GPU fell off the bus")

    with monkeypatch.context() as patch:
        patch.setattr(services, "encode_inputs", broken_encode)
        failed = post_embeddings(client, HELLO)
    assert_error(failed, 500, param=None, code="internal_error", type="server_error")
    assert (counter(org_scope(project)), counter(project_scope(project))) == before
    assert UsageRecord.objects.count() == 1

    # The RPM and TPM reservations came back too: the second of 2 RPM is still free.
    second = post_embeddings(client, HELLO)
    assert second.status_code == 200
    assert second["x-ratelimit-remaining-requests"] == "0"
    assert second["x-ratelimit-remaining-tokens"] == "0"


def test_a_request_is_answered_before_its_reservation_is_settled(client, project):
    """The settle (``r`` -> ``s``) runs on the settle thread after the response: with that thread
    held, the request is answered and metered, its tokens counted in ``u`` and still in flight in
    ``r``; once the thread runs, they are settled."""
    assert post_embeddings(client, HELLO).status_code == 200  # the counters exist
    settles_wait()
    before = counter(project_scope(project))
    hold = threading.Event()
    _settler.submit(hold.wait, 30)
    try:
        assert post_embeddings(client, HELLO).status_code == 200
        held = counter(project_scope(project))
        assert int(held["u"]) == int(before["u"]) + HELLO_TOKENS
        assert int(held["r"]) == int(before["r"]) + HELLO_TOKENS
        assert int(held["s"]) == int(before["s"])
    finally:
        hold.set()
    settles_wait()
    after = counter(project_scope(project))
    assert (int(after["r"]), int(after["s"])) == (int(before["r"]), int(before["s"]) + HELLO_TOKENS)
    assert UsageRecord.objects.count() == 2


def test_settles_past_the_queue_bound_run_in_the_request_thread(client, project, monkeypatch):
    """While the settle thread is SETTLE_QUEUE_MAX settles behind (a slow store), a request settles
    in its own thread: the queue, and the memory it holds, stay bounded; nothing is lost."""
    from limits import admission

    assert post_embeddings(client, HELLO).status_code == 200
    settles_wait()
    assert admission._settles_queued == 0
    monkeypatch.setattr(admission, "SETTLE_QUEUE_MAX", 1)
    hold = threading.Event()
    _settler.submit(hold.wait, 30)
    try:
        before = counter(project_scope(project))
        assert post_embeddings(client, HELLO).status_code == 200  # queued behind the held thread
        assert post_embeddings(client, HELLO).status_code == 200  # past the bound: settled at once
        held = counter(project_scope(project))
        assert int(held["u"]) == int(before["u"]) + 2 * HELLO_TOKENS
        assert int(held["r"]) == int(before["r"]) + HELLO_TOKENS  # only the queued one in flight
        assert int(held["s"]) == int(before["s"]) + HELLO_TOKENS
    finally:
        hold.set()
    settles_wait()
    after = counter(project_scope(project))
    assert (int(after["r"]), int(after["s"])) == (int(before["r"]), int(before["s"]) + 2 * HELLO_TOKENS)
    assert admission._settles_queued == 0 and UsageRecord.objects.count() == 3


def test_a_settle_that_fails_on_the_settle_thread_is_logged_and_the_request_stands(client, project, monkeypatch,
                                                                                   caplog):
    from limits import admission

    assert post_embeddings(client, HELLO).status_code == 200
    settles_wait()
    backend = admission_backend()
    run = backend.run

    def failing_settle(op, *args, **kwargs):
        if op == "settle":
            raise RuntimeError("store answered nonsense")
        return run(op, *args, **kwargs)

    monkeypatch.setattr(backend, "run", failing_settle)
    assert post_embeddings(client, HELLO).status_code == 200
    settles_wait()
    assert "Settling a reservation failed" in caplog.text and "store answered nonsense" in caplog.text
    assert UsageRecord.objects.count() == 2

    def shut_down(*args, **kwargs):  # what the executor does once the interpreter is exiting
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    monkeypatch.setattr(backend, "run", run)
    monkeypatch.setattr(admission._settler, "submit", shut_down)
    before = counter(project_scope(project))
    assert post_embeddings(client, HELLO).status_code == 200  # settled in the request instead
    after = counter(project_scope(project))
    assert (int(after["r"]), int(after["s"])) == (int(before["r"]), int(before["s"]) + HELLO_TOKENS)


def test_counters_rebuild_from_the_usage_records_after_redis_is_flushed(client, project):
    for text in ("one", "two words", "three more words"):
        assert post_embeddings(client, {"model": MODEL, "input": text}).status_code == 200
    spent = metered_tokens(project=project)
    assert used(project_scope(project)) == used(org_scope(project)) == spent

    settles_wait()  # a settle landing on the rebuilt counter would add its tokens again (the safe side)
    flush_admission_store()
    assert counter(project_scope(project)) == {}
    # A quota that fits exactly one more request: only a counter rebuilt from Postgres gets this right.
    limit_set(organization=project.organization, project=project, monthly_tokens=spent + HELLO_TOKENS)
    assert post_embeddings(client, HELLO).status_code == 200
    assert used(project_scope(project)) == used(org_scope(project)) == spent + HELLO_TOKENS
    assert_error(post_embeddings(client, HELLO), 429, param=None, code="insufficient_quota",
                 type="insufficient_quota")


def test_reconcile_command_rebuilds_counters_and_shows_what_changed(client, project):
    assert post_embeddings(client, HELLO).status_code == 200
    settles_wait()  # its tokens settled, none in flight
    backend = admission_backend()
    from datetime import datetime, timezone

    start, _ = month_bounds(datetime.now(timezone.utc))
    backend.client.hset(monthly_key(project_scope(project), start), "u", 999)  # drifted
    out = io.StringIO()
    call_command("reconcile_usage_counters", "--dry-run", stdout=out)
    assert used(project_scope(project)) == 999 and "would change" in out.getvalue()

    out = io.StringIO()
    call_command("reconcile_usage_counters", stdout=out)
    lines = out.getvalue().splitlines()
    line = next(row for row in lines if row.startswith("proj Acme/Default"))
    assert line.split()[2:6] == ["999", str(HELLO_TOKENS), "0", str(HELLO_TOKENS)] and line.endswith("changed")
    assert lines[-1] == "2 counters, 1 changed."
    assert used(project_scope(project)) == HELLO_TOKENS


@pytest.mark.django_db(transaction=True)
def test_the_openai_client_gets_typed_errors_and_does_not_retry_an_exhausted_quota(live_server, created_key,
                                                                                   default_model, project):
    import openai

    limit_set(organization=project.organization, project=project, monthly_tokens=HELLO_TOKENS)
    api = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=created_key.plaintext, max_retries=2)
    assert api.embeddings.create(**HELLO).usage.total_tokens == HELLO_TOKENS
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as raised:
        api.embeddings.create(**HELLO)
    assert raised.value.code == "insufficient_quota" and raised.value.type == "insufficient_quota"
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert time.monotonic() - started < 5  # answered at once: the client's backoff retries were skipped


# --- Service tiers ----------------------------------------------------------------------------------

def test_flex_does_not_consume_rpm_or_tpm_but_counts_to_the_monthly_quota(client, project):
    limit_set(organization=project.organization, project=project, rpm=1, tpm=HELLO_TOKENS)
    for _ in range(3):
        response = post_embeddings(client, {**HELLO, "service_tier": "flex"})
        assert response.status_code == 200 and response.json()["service_tier"] == "flex"
        assert response["x-ratelimit-remaining-requests"] == "1"
        assert response["x-ratelimit-remaining-tokens"] == str(HELLO_TOKENS)
    assert used(project_scope(project)) == 3 * HELLO_TOKENS
    assert set(UsageRecord.objects.values_list("service_tier", flat=True)) == {"flex"}

    auto = post_embeddings(client, {**HELLO, "service_tier": "auto"})
    assert auto.status_code == 200 and auto.json()["service_tier"] == "default"
    assert_error(post_embeddings(client, {**HELLO, "service_tier": "default"}), 429, param=None,
                 code="rate_limit_exceeded", type="requests")

    # Flex still stops at the monthly quota.
    limit_set(organization=project.organization, project=project, monthly_tokens=5 * HELLO_TOKENS)
    assert post_embeddings(client, {**HELLO, "service_tier": "flex"}).status_code == 200
    assert_error(post_embeddings(client, {**HELLO, "service_tier": "flex"}), 429, param=None,
                 code="insufficient_quota", type="insufficient_quota")
    assert metered_tokens(project=project) == 5 * HELLO_TOKENS


# --- Redis down --------------------------------------------------------------------------------------

REDIS_DOWN = {
    "ADMISSION_REDIS_URL": CLOSED_PORT_URL,
    "CACHES": {"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": CLOSED_PORT_URL,
                           "OPTIONS": {"IGNORE_EXCEPTIONS": True, "SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1}}},
}


def test_redis_down_fails_closed_with_503_by_default_never_500(client, project, created_key):
    limit_set(organization=project.organization, project=project, rpm=10)
    with override_settings(**REDIS_DOWN):
        # The key cache is down too: authentication falls back to the database.
        assert api_key_resolve(plaintext=created_key.plaintext).key_id == created_key.api_key.pk
        response = post_embeddings(client, HELLO)
        error = assert_error(response, 503, param=None, code="service_unavailable", type="server_error")
        assert "Rate limiting is temporarily unavailable" in error["message"]
        assert response["Retry-After"] == "5"
        assert_error(post_embeddings(client, {"model": MODEL, "input": ""}), 400, param="input",
                     code=post_embeddings(client, {"model": MODEL, "input": ""}).json()["error"]["code"])
        # The console's summary still answers, from Postgres.
        assert limits_usage_summary(organization=project.organization, project=project)
    assert UsageRecord.objects.count() == 0


def test_redis_down_fails_open_when_configured(client, project):
    limit_set(organization=project.organization, project=project, rpm=10)
    with override_settings(**REDIS_DOWN, ADMISSION_REDIS_DOWN_POLICY="open"):
        response = post_embeddings(client, HELLO)
        assert response.status_code == 200, response.content
        assert response["x-ratelimit-limit-requests"] == "10"
        assert "x-ratelimit-remaining-requests" not in response  # unknown while the store is down
    assert UsageRecord.objects.count() == 1  # still metered in Postgres


# --- Limits: command, service, admin, console summary -----------------------------------------------

def test_set_limits_command_takes_effect_at_once_and_none_clears(client, project, created_key):
    out = io.StringIO()
    call_command("set_limits", "--org", "acme", "--project", "Default", "--rpm", "1", "--tpm", "1_000", stdout=out)
    assert out.getvalue().strip() == f"project {project.public_id}: monthly_tokens=unlimited rpm=1 tpm=1,000"
    assert post_embeddings(client, HELLO).status_code == 200
    assert post_embeddings(client, HELLO).status_code == 429

    out = io.StringIO()
    call_command("set_limits", "--org", project.organization.public_id, "--project", project.public_id,
                 "--rpm", "none", stdout=out)
    assert "rpm=unlimited tpm=1,000" in out.getvalue()
    assert post_embeddings(client, HELLO).status_code == 200

    call_command("set_limits", "--org", "Acme", "--key", created_key.api_key.public_id, "--rpm", "0",
                 stdout=io.StringIO())
    error = assert_error(post_embeddings(client, HELLO), 429, param=None, code="rate_limit_exceeded",
                         type="requests")
    assert "Limit 0" in error["message"]

    for argv, message in [
        (["--org", "nope", "--rpm", "1"], "No organization"),
        (["--org", "Acme", "--project", "nope", "--rpm", "1"], "No project"),
        (["--org", "Acme", "--key", "key_nope", "--rpm", "1"], "No key"),
        (["--org", "Acme", "--rpm", "-1"], "non-negative"),
        (["--org", "Acme", "--tpm", "lots"], "non-negative"),
        (["--org", "Acme", "--rpm", str(2**31)], "integer from 0 to 2,147,483,647"),
        (["--org", "Acme"], "Nothing to set"),
        (["--org", "Acme", "--key", created_key.api_key.public_id, "--monthly-tokens", "5"], "RPM/TPM caps only"),
    ]:
        with pytest.raises(CommandError, match=message):
            call_command("set_limits", *argv, stdout=io.StringIO(), stderr=io.StringIO())


def test_limit_rows_are_one_per_scope_and_keys_take_no_monthly_quota(project, created_key):
    limit_set(organization=project.organization, monthly_tokens=5)
    limit_set(organization=project.organization, tpm=7)
    assert Limit.objects.get().monthly_tokens == 5 and Limit.objects.get().tpm == 7
    with pytest.raises(IntegrityError), transaction.atomic():
        Limit.objects.create(organization=project.organization, api_key=created_key.api_key, project=project,
                             monthly_tokens=3)
    with pytest.raises(IntegrityError), transaction.atomic():
        Limit.objects.create(organization=project.organization)
    with pytest.raises(ValueError):
        limit_set(organization=project.organization, rpm=-3)


def test_admin_lists_and_edits_limits(admin_client, project):
    limit_set(organization=project.organization, project=project, rpm=5)
    limit = Limit.objects.get()
    assert admin_client.get("/admin/accounts/limit/").status_code == 301  # moved with the model
    assert admin_client.get("/admin/limits/limit/").status_code == 200
    page = admin_client.get(f"/admin/limits/limit/{limit.pk}/change/")
    assert page.status_code == 200 and b'name="rpm"' in page.content


@pytest.mark.django_db(transaction=True)
def test_limits_deleted_with_the_admins_bulk_action_apply_to_the_next_request(admin_client, client, project, settings):
    """The admin's "Delete selected" deletes a queryset: no ``delete_model``, so nothing made the
    processes re-read their cached limits, for LIMITS_CACHE_SECONDS (every change does now: a signal)."""
    settings.LIMITS_CACHE_SECONDS = 30
    limit_set(organization=project.organization, project=project, rpm=0)
    assert_error(post_embeddings(client, HELLO), 429, param=None, code="rate_limit_exceeded", type="requests")
    response = admin_client.post("/admin/limits/limit/", {"action": "delete_selected", "post": "yes",
                                                          "_selected_action": list(Limit.objects.values_list("pk", flat=True))})
    assert response.status_code == 302 and not Limit.objects.exists()
    assert post_embeddings(client, HELLO).status_code == 200


def test_limits_usage_summary_reports_every_applicable_limit_with_its_usage(client, project, created_key, warm):
    other_key = api_key_create(project=project, name="other")
    limit_set(organization=project.organization, monthly_tokens=1000)
    limit_set(organization=project.organization, project=project, rpm=10, tpm=10)
    limit_set(organization=project.organization, api_key=created_key.api_key, rpm=5)
    for _ in range(2):
        assert post_embeddings(client, HELLO).status_code == 200

    org_rows = limits_usage_summary(organization=project.organization)
    assert [(r.scope, r.kind, r.limit, r.used) for r in org_rows] == [
        ("organization", "monthly_tokens", 1000, 8), ("organization", "rpm", None, 2),
        ("organization", "tpm", None, 8)]
    month_end = month_bounds(org_rows[0].resets_at)[0]
    assert org_rows[0].resets_at == month_end and org_rows[0].resets_at.day == 1
    assert org_rows[0].scope_id == project.organization.public_id and org_rows[0].scope_name == "Acme"

    rows = {(r.scope, r.kind): r for r in limits_usage_summary(organization=project.organization, project=project)}
    assert set(rows) == {("organization", "monthly_tokens"), ("organization", "rpm"), ("organization", "tpm"),
                         ("project", "monthly_tokens"), ("project", "rpm"), ("project", "tpm"),
                         ("key", "rpm")}  # the other key has no limit row
    assert (rows["project", "monthly_tokens"].limit, rows["project", "monthly_tokens"].used) == (None, 8)
    assert (rows["project", "rpm"].limit, rows["project", "rpm"].used) == (10, 2)
    assert (rows["project", "tpm"].limit, rows["project", "tpm"].used) == (10, 8)
    key_row = rows["key", "rpm"]
    assert (key_row.scope_id, key_row.scope_name, key_row.limit, key_row.used) == (
        created_key.api_key.public_id, "test", 5, 2)
    from django.utils import timezone

    # 2 of 5 RPM used: the bucket is full again in 2 x 12 s.
    assert 12 < (key_row.resets_at - timezone.now()).total_seconds() <= 24
    assert other_key.api_key.public_id not in {r.scope_id for r in rows.values()}


# --- The admission primitive itself ---------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_concurrent_reservations_never_overshoot(project, created_key):
    limit_set(organization=project.organization, project=project, monthly_tokens=10 * 7, rpm=1000)
    key = api_key_resolve(plaintext=created_key.plaintext)
    # Limits cached and counters built once first, so the 64 threads need no database connection
    # (the Postgres these tests share has few to spare).
    admission_reserve(key=key, tokens=7, service_tier="default").refund()
    start = threading.Barrier(64)

    def reserve(_):
        start.wait()
        try:
            admission_reserve(key=key, tokens=7, service_tier="default").settle()
            return "ok"
        except Exception as exc:  # noqa: BLE001 - the 429 is what we count
            return getattr(exc, "code", repr(exc))
        finally:
            connection.close()

    with ThreadPoolExecutor(64) as pool:
        outcomes = list(pool.map(reserve, range(64)))
    assert outcomes.count("ok") == 10 and outcomes.count("insufficient_quota") == 54
    assert used(project_scope(project)) == 70


def test_reservations_in_flight_survive_a_flush_and_a_reconcile(project, created_key):
    key = api_key_resolve(plaintext=created_key.plaintext)
    scope = project_scope(project)
    in_flight = admission_reserve(key=key, tokens=10, service_tier="default")
    refunded = admission_reserve(key=key, tokens=3, service_tier="default")
    assert used(scope) == 13

    # The store loses everything while both run; the next request rebuilds from Postgres (0 rows).
    admission_backend().delete([monthly_key(scope, month_bounds(__import__("datetime").datetime.now(
        __import__("datetime").timezone.utc))[0])])
    admission_reserve(key=key, tokens=5, service_tier="default").settle()
    assert used(scope) == 5
    refunded.refund()  # reserved in the lost generation: nothing to give back
    assert used(scope) == 5
    in_flight.settle()  # succeeded: its tokens are added to the rebuilt counter
    assert used(scope) == 15

    # A reconcile keeps what is in flight: database (0 rows here) + reserved.
    pending = admission_reserve(key=key, tokens=4, service_tier="default")
    from datetime import datetime, timezone

    start, end = month_bounds(datetime.now(timezone.utc))
    row = admission_reconcile(scope=scope, month_start=start, month_end=end)
    assert (row.before, row.database, row.in_flight, row.after) == (19, 0, 4, 4)
    pending.refund()
    assert used(scope) == 0


def test_the_limits_cache_never_serves_one_projects_limits_to_another_keyless_scope(project, settings):
    """Lines of batches whose creating key was deleted are admitted with key id 0 (`batches.services.
    _resolved_key`); the process's limits cache, keyed by the key id alone, handed the first such
    organization's limits (its monthly counters) to every other's for LIMITS_CACHE_SECONDS."""
    from accounts.selectors import ResolvedKey
    from accounts.services import organization_get_or_create, project_get_or_create
    from config.errors import RateLimitError

    settings.LIMITS_CACHE_SECONDS = 30
    other = project_get_or_create(organization=organization_get_or_create(name="Other"), name="Default")
    limit_set(organization=other.organization, project=other, monthly_tokens=5)

    def keyless(p) -> ResolvedKey:
        return ResolvedKey(key_id=0, key_public_id="", project_id=p.pk, project_public_id=p.public_id,
                           organization_id=p.organization_id, organization_public_id=p.organization.public_id,
                           expires_at=None, revoked_at=None, project_archived_at=None)

    admission_reserve(key=keyless(project), tokens=10, service_tier="batch").settle()
    with pytest.raises(RateLimitError) as refused:
        admission_reserve(key=keyless(other), tokens=10, service_tier="batch")
    assert refused.value.code == "insufficient_quota"
    settles_wait()
    assert used(project_scope(project)) == 10 and used(project_scope(other)) == 0


def test_a_429_from_the_rpm_precheck_reports_the_tpm_limit_too(client, project, warm):
    """Once the process knows the RPM bucket is full it answers 429 before tokenizing
    (`admission_precheck`); those 429s said ``x-ratelimit-limit-tokens: unlimited``."""
    limit_set(organization=project.organization, project=project, rpm=2, tpm=1000)
    statuses, limits = [], []
    for _ in range(6):
        response = post_embeddings(client, HELLO)
        statuses.append(response.status_code)
        limits.append((response["x-ratelimit-limit-requests"], response["x-ratelimit-limit-tokens"]))
    assert statuses == [200, 200, 429, 429, 429, 429], statuses
    assert set(limits) == {("2", "1000")}, limits
