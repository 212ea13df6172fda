"""Failed API-key authentication is throttled per client address (issue 11, item 4), and the
client address is read from ``X-Forwarded-For`` only behind a trusted proxy."""
from __future__ import annotations

import pytest
from django.test import RequestFactory
from rest_framework.test import APIClient

from config.client_address import client_ip
from tests.conftest import assert_error

LIMIT = 5
BAD_KEY = "Bearer sk-proj-" + "A" * 43


@pytest.fixture(autouse=True)
def _low_limit(settings):
    settings.API_AUTH_FAILURE_LIMIT = LIMIT
    settings.API_AUTH_FAILURE_WINDOW_SECONDS = 60
    settings.TRUSTED_PROXIES = []


def models(authorization: str, **extra):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=authorization)
    return api.get("/v1/models", **extra)


def fail(times: int, **extra) -> list[int]:
    """Send ``times`` distinct unknown keys; their statuses."""
    return [models(f"Bearer sk-proj-{i:043d}", **extra).status_code for i in range(times)]


def assert_throttled(response):
    error = assert_error(response, 429, param=None, code="too_many_failed_authentications", type="requests")
    assert "Too many failed authentication attempts" in error["message"]
    assert 1 <= int(response["Retry-After"]) <= 60
    return error


def test_guessing_keys_from_one_address_is_429_after_the_limit(db, django_assert_max_num_queries):
    assert fail(LIMIT) == [401] * LIMIT
    with django_assert_max_num_queries(0):  # refused before any key lookup
        assert_throttled(models(BAD_KEY))
    assert_throttled(models("Bearer not-even-a-key"))


def test_blocked_address_is_refused_even_with_a_valid_key_other_addresses_are_not(created_key):
    """Documented choice (accounts.throttling): a blocked address gets 429 whatever key it sends
    (GitHub, django-axes); another address with the same valid key is served."""
    good = f"Bearer {created_key.plaintext}"
    assert models(good).status_code == 200
    fail(LIMIT)
    assert_throttled(models(good))
    assert models(good, REMOTE_ADDR="198.51.100.7").status_code == 200
    assert models(BAD_KEY, REMOTE_ADDR="198.51.100.7").status_code == 401


def test_successes_do_not_reset_the_count(created_key):
    good = f"Bearer {created_key.plaintext}"
    for _ in range(LIMIT - 1):
        assert models(BAD_KEY).status_code == 401
        assert models(good).status_code == 200
    assert models(BAD_KEY).status_code == 401
    assert_throttled(models(good))


def test_revoked_key_failures_count_too(created_key):
    from accounts.services import api_key_revoke

    api_key_revoke(api_key=created_key.api_key)
    assert [models(f"Bearer {created_key.plaintext}").status_code for _ in range(LIMIT)] == [401] * LIMIT
    assert_throttled(models(f"Bearer {created_key.plaintext}"))


def test_admin_key_endpoint_shares_the_count(db):
    fail(LIMIT)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION="Bearer sk-admin-" + "B" * 43)
    assert_throttled(api.get("/v1/organization/usage/embeddings?start_time=0"))


def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(db):
    statuses = [models(BAD_KEY, HTTP_X_FORWARDED_FOR=f"203.0.113.{i}").status_code for i in range(LIMIT)]
    assert statuses == [401] * LIMIT
    assert_throttled(models(BAD_KEY, HTTP_X_FORWARDED_FOR="203.0.113.200"))


def test_forwarded_for_from_a_trusted_proxy_is_the_client(settings, created_key):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    via_proxy = {"REMOTE_ADDR": "10.1.2.3"}
    assert fail(LIMIT, HTTP_X_FORWARDED_FOR="203.0.113.5", **via_proxy) == [401] * LIMIT
    assert_throttled(models(BAD_KEY, HTTP_X_FORWARDED_FOR="203.0.113.5", **via_proxy))
    # Another client behind the same proxy, and the proxy's other hop appended: not blocked.
    good = f"Bearer {created_key.plaintext}"
    assert models(good, HTTP_X_FORWARDED_FOR="203.0.113.6", **via_proxy).status_code == 200
    assert models(good, HTTP_X_FORWARDED_FOR="203.0.113.6, 10.9.9.9", **via_proxy).status_code == 200
    # A client cannot hide behind an address it writes to the left of its own.
    assert_throttled(models(BAD_KEY, HTTP_X_FORWARDED_FOR="198.51.100.1, 203.0.113.5", **via_proxy))


def test_ipv6_clients_count_per_slash_64(db):
    statuses = [models(BAD_KEY, REMOTE_ADDR=f"2001:db8:1:2::{i:x}").status_code for i in range(1, LIMIT + 1)]
    assert statuses == [401] * LIMIT
    assert_throttled(models(BAD_KEY, REMOTE_ADDR="2001:db8:1:2:ffff::1"))
    assert models(BAD_KEY, REMOTE_ADDR="2001:db8:1:3::1").status_code == 401


def test_window_end_lifts_the_block(db, settings):
    from django_redis import get_redis_connection

    from accounts.throttling import auth_failures_cache_key

    fail(LIMIT)
    assert_throttled(models(BAD_KEY))
    get_redis_connection("default").delete(auth_failures_cache_key("127.0.0.1"))  # as its expiry does
    assert models(BAD_KEY).status_code == 401


def test_a_count_without_expiry_gets_the_window_back(db, settings):
    """Should a failure's INCR ever create the counter after its window expired, the counter still
    gets an expiry: no address is locked out for good."""
    from django_redis import get_redis_connection

    from accounts.throttling import auth_failure_record, auth_failures_cache_key

    redis = get_redis_connection("default")
    key = auth_failures_cache_key("192.0.2.77")
    redis.set(key, LIMIT + 5)  # as left by an INCR racing the expiry: no TTL
    auth_failure_record(address="192.0.2.77")
    assert 0 < redis.ttl(key) <= settings.API_AUTH_FAILURE_WINDOW_SECONDS


@pytest.mark.parametrize(("peer", "forwarded", "trusted", "expected"), [
    ("192.0.2.1", "203.0.113.9", [], "192.0.2.1"),
    ("192.0.2.1", "203.0.113.9", ["10.0.0.0/8"], "192.0.2.1"),
    ("10.0.0.1", "203.0.113.9", ["10.0.0.0/8"], "203.0.113.9"),
    ("10.0.0.1", "198.51.100.1, 203.0.113.9, 10.0.0.2", ["10.0.0.0/8"], "203.0.113.9"),
    ("10.0.0.1", "10.0.0.3, 10.0.0.2", ["10.0.0.0/8"], "10.0.0.3"),
    ("10.0.0.1", "", ["10.0.0.0/8"], "10.0.0.1"),
    ("10.0.0.1", "garbage, 203.0.113.9", ["10.0.0.0/8"], "203.0.113.9"),
    ("10.0.0.1", "203.0.113.9, garbage", ["10.0.0.0/8"], "10.0.0.1"),
    ("10.0.0.1", "203.0.113.9:4711", ["10.0.0.1"], "203.0.113.9"),
    ("10.0.0.1", "[2001:db8::5]:443", ["10.0.0.1"], "2001:db8::5"),
    ("::ffff:10.0.0.1", "203.0.113.9", ["10.0.0.0/8"], "203.0.113.9"),
])
def test_client_ip(settings, peer, forwarded, trusted, expected):
    settings.TRUSTED_PROXIES = trusted
    request = RequestFactory().get("/", REMOTE_ADDR=peer, HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == expected


def test_axes_uses_the_same_client_address(settings):
    from axes.helpers import get_client_ip_address

    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    request = RequestFactory().post("/console/login/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert get_client_ip_address(request) == "203.0.113.9"
    request = RequestFactory().post("/console/login/", REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert get_client_ip_address(request) == "192.0.2.1"
