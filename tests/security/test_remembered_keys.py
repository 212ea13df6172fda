"""``POST /v1/embeddings`` takes a key its process resolved lately from memory and confirms it in
the request's admission round trip (issue 12: one Redis round trip fewer per request), and keeps
every guarantee of a round trip: a change to a key applies to the next request (issue 11, item 6),
a client address over its failed-authentication limit gets 429 whatever it sends (item 4), a
refusal is the one a round trip would have given, and nothing is billed for a refused request."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from accounts.services import (api_key_cache_key, api_key_revoke, hash_key, key_cache_invalidated,
                               project_allowed_models_set)
from metering.models import UsageRecord
from tests.conftest import assert_error, post_embeddings

BODY = {"model": "all-MiniLM-L6-v2", "input": "hi"}
LIMIT = 3


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.API_KEY_CACHE_SECONDS = 300  # the Redis entry and the memory outlive every test
    settings.API_AUTH_FAILURE_LIMIT = LIMIT
    settings.TRUSTED_PROXIES = []


@pytest.fixture
def cache_reads(monkeypatch) -> list:
    """The names of every cache read authentication makes (`config.cache.RedisCache.get_many_stored`)."""
    from django.core.cache import cache

    reads = []
    original = cache.get_many_stored

    def counted(names):
        reads.append(list(names))
        return original(names)

    monkeypatch.setattr(cache, "get_many_stored", counted)
    return reads


@pytest.fixture
def remembered(client, cache_reads):
    """``client``'s key, remembered by this process: a first request looked it up and wrote its cache
    entry, a second read it from the cache (only a key read from the cache is remembered)."""
    for reads in (1, 2):
        assert post_embeddings(client, BODY).status_code == 200
        assert len(cache_reads) == reads
    cache_reads.clear()
    return client


def guess_keys(times: int) -> None:
    """``times`` failed authentications from the test client's address."""
    for i in range(times):
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer sk-proj-{i:043d}")
        assert api.get("/v1/models").status_code == 401


def test_a_remembered_key_is_served_without_a_cache_read(remembered, cache_reads):
    for _ in range(3):
        response = post_embeddings(remembered, BODY)
        assert response.status_code == 200, response.content
        assert response["x-ratelimit-limit-requests"]
    assert cache_reads == []
    assert UsageRecord.objects.count() == 5


def test_a_revoked_key_is_refused_on_the_next_request(remembered, created_key):
    api_key_revoke(api_key=created_key.api_key)
    error = assert_error(post_embeddings(remembered, BODY), 401, param=None, code="invalid_api_key")
    assert "revoked" in error["message"]
    assert UsageRecord.objects.count() == 2


def test_a_cache_entry_rewritten_since_it_was_remembered_does_not_confirm(remembered, created_key):
    """An entry is there again (the revocation's mark, which a lookup after it leaves in place):
    what the admission call compares is its content, not its presence."""
    from django.core.cache import cache

    api_key_revoke(api_key=created_key.api_key)
    models = APIClient()
    models.credentials(HTTP_AUTHORIZATION=f"Bearer {created_key.plaintext}")
    assert models.get("/v1/models").status_code == 401
    assert key_cache_invalidated(cache.get(api_key_cache_key(hash_key(created_key.plaintext))))
    assert_error(post_embeddings(remembered, BODY), 401, param=None, code="invalid_api_key")
    assert UsageRecord.objects.count() == 2


@pytest.mark.parametrize("body", [{**BODY, "input": ""}, {**BODY, "model": "no-such-model"},
                                  {**BODY, "dimensions": 5}])
def test_a_refusal_before_admission_is_the_one_a_round_trip_gives(remembered, created_key, body):
    """A refused body (400, 404) sent with a key revoked since it was remembered: 401."""
    api_key_revoke(api_key=created_key.api_key)
    assert_error(post_embeddings(remembered, body), 401, param=None, code="invalid_api_key")


def test_other_methods_take_the_round_trip(remembered, created_key):
    api_key_revoke(api_key=created_key.api_key)
    for method in ("get", "put", "options"):
        assert_error(getattr(remembered, method)("/v1/embeddings"), 401, param=None, code="invalid_api_key")


def test_a_refusal_of_an_unchanged_key_stands(remembered, cache_reads):
    assert_error(post_embeddings(remembered, {**BODY, "input": ""}), 400, param="input", code="invalid_value")
    assert len(cache_reads) == 1  # confirmed with a round trip before the answer
    assert post_embeddings(remembered, BODY).status_code == 200


def test_an_allowlist_change_applies_on_the_next_request_both_ways(remembered, project, cache_reads):
    project_allowed_models_set(project=project, models=["another-model"])
    error = assert_error(post_embeddings(remembered, BODY), 403, param="model", code="model_not_allowed")
    assert "project" in error["message"]
    project_allowed_models_set(project=project, models=[])
    cache_reads.clear()
    # the key changed but is valid: the request is served as the key is now
    assert post_embeddings(remembered, BODY).status_code == 200
    assert len(cache_reads) == 1
    assert UsageRecord.objects.count() == 3


@pytest.mark.parametrize("body", [BODY, {**BODY, "input": ""}, {**BODY, "model": "no-such-model"}])
def test_an_address_over_its_failure_limit_gets_429_with_a_remembered_key(remembered, body):
    guess_keys(LIMIT)
    error = assert_error(post_embeddings(remembered, body), 429, param=None,
                         code="too_many_failed_authentications", type="requests")
    assert "Too many failed authentication attempts" in error["message"]
    assert UsageRecord.objects.count() == 2
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=remembered._credentials["HTTP_AUTHORIZATION"])
    assert post_embeddings(other, BODY, REMOTE_ADDR="198.51.100.7").status_code == 200


def test_an_expired_cache_entry_is_read_again_and_the_request_served(remembered, created_key, cache_reads):
    """The Redis entry outlived by the memory (it expired, or the cache was flushed): the admission
    round trip does not confirm the key, the request is authenticated with a round trip and served
    once, billed once."""
    from django.core.cache import cache

    name = api_key_cache_key(hash_key(created_key.plaintext))
    cache.delete(name)
    response = post_embeddings(remembered, BODY)
    assert response.status_code == 200, response.content
    assert len(cache_reads) == 1
    assert cache.get(name) is not None
    assert UsageRecord.objects.count() == 3
    for reads in (1, 0):  # read from the cache once more, then from memory
        cache_reads.clear()
        assert post_embeddings(remembered, BODY).status_code == 200
        assert len(cache_reads) == reads


def test_models_list_is_not_served_from_memory(remembered, created_key, cache_reads):
    """Only requests that are admitted (the embeddings endpoint) can be confirmed in admission."""
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {created_key.plaintext}")
    assert api.get("/v1/models").status_code == 200
    assert len(cache_reads) == 1


@pytest.mark.parametrize("policy, status, records", [("closed", 503, 2), ("open", 200, 3)])
def test_admission_store_down_with_a_remembered_key(remembered, settings, monkeypatch, policy, status, records):
    """Nothing can confirm the key: it is authenticated with the round trip (the cache still
    answers), then the store-down policy applies as to any request."""
    from limits.store import AdmissionUnavailable, RedisBackend

    def down(self, *args, **kwargs):
        raise AdmissionUnavailable("connection refused")

    monkeypatch.setattr(RedisBackend, "run", down)
    settings.ADMISSION_REDIS_DOWN_POLICY = policy
    assert post_embeddings(remembered, BODY).status_code == status
    assert UsageRecord.objects.count() == records
