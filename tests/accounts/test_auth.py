"""Bearer-key authentication: every bad key is a 401 envelope; plaintext never stored or logged."""
from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import APIKey
from accounts.services import api_key_create, api_key_revoke, hash_key
from metering.models import UsageRecord
from tests.conftest import assert_error, post_embeddings

BODY = {"model": "all-MiniLM-L6-v2", "input": "hi"}


def call(authorization: str | None):
    api = APIClient()
    if authorization is not None:
        api.credentials(HTTP_AUTHORIZATION=authorization)
    return post_embeddings(api, BODY)


@pytest.mark.parametrize("authorization", [
    None,                                   # missing
    "",                                     # empty
    "Bearer",                               # no key
    "Basic dXNlcjpwYXNz",                   # wrong scheme
    "Bearer not-a-key",                     # malformed (no sk- prefix)
    "Bearer sk-proj-" + "x" * 300,          # malformed (too long)
    "Bearer sk-proj-a b",                   # malformed (space)
    "Bearer sk-proj-" + "A" * 43,           # well-formed, unknown
])
def test_missing_malformed_or_unknown_key_is_401(default_model, authorization):
    response = call(authorization)
    assert_error(response, 401, param=None, code="invalid_api_key")
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert UsageRecord.objects.count() == 0


def test_revoked_key_is_401_at_once(created_key, default_model):
    assert call(f"Bearer {created_key.plaintext}").status_code == 200  # now cached as valid
    api_key_revoke(api_key=created_key.api_key)
    error = assert_error(call(f"Bearer {created_key.plaintext}"), 401, param=None, code="invalid_api_key")
    assert "revoked" in error["message"]
    assert UsageRecord.objects.count() == 1


def test_revocation_through_the_database_alone_takes_effect_within_the_cache_ttl(created_key, default_model,
                                                                                 settings):
    """A revocation that bypasses the service (e.g. SQL) is seen once the cached entry expires."""
    from django.core.cache import cache

    from accounts.services import api_key_cache_key

    assert call(f"Bearer {created_key.plaintext}").status_code == 200
    APIKey.objects.filter(pk=created_key.api_key.pk).update(revoked_at=timezone.now())
    assert cache.ttl(api_key_cache_key(created_key.api_key.secret_hash)) <= settings.API_KEY_CACHE_SECONDS
    cache.delete(api_key_cache_key(created_key.api_key.secret_hash))  # what the TTL does after <= 5 s
    assert_error(call(f"Bearer {created_key.plaintext}"), 401, param=None, code="invalid_api_key")


def test_expired_key_is_401(project, default_model):
    created = api_key_create(project=project, expires_at=timezone.now() - timedelta(seconds=1))
    error = assert_error(call(f"Bearer {created.plaintext}"), 401, param=None, code="invalid_api_key")
    assert "expired" in error["message"]


def test_key_expiring_later_works(project, default_model):
    created = api_key_create(project=project, expires_at=timezone.now() + timedelta(days=1))
    assert call(f"Bearer {created.plaintext}").status_code == 200


def test_archived_project_key_is_401(created_key, project, default_model):
    project.archived_at = timezone.now()
    project.save()
    assert_error(call(f"Bearer {created_key.plaintext}"), 401, param=None, code="invalid_api_key")


def test_key_shape_and_storage(created_key):
    key = APIKey.objects.get(pk=created_key.api_key.pk)
    assert created_key.plaintext.startswith("sk-proj-")
    assert len(created_key.plaintext) == len("sk-proj-") + 43
    assert key.secret_hash == hash_key(created_key.plaintext)
    assert key.masked == f"{created_key.plaintext[:12]}...{created_key.plaintext[-4:]}"
    assert key.public_id.startswith("key_")
    assert key.project.public_id.startswith("proj_")
    assert key.project.organization.public_id.startswith("org_")


def test_last_used_at_is_written_at_most_once_a_minute(created_key, default_model, django_assert_max_num_queries):
    assert APIKey.objects.get(pk=created_key.api_key.pk).last_used_at is None
    assert call(f"Bearer {created_key.plaintext}").status_code == 200
    first = APIKey.objects.get(pk=created_key.api_key.pk).last_used_at
    assert first is not None
    for _ in range(3):
        assert call(f"Bearer {created_key.plaintext}").status_code == 200
    assert APIKey.objects.get(pk=created_key.api_key.pk).last_used_at == first


def test_plaintext_key_never_in_database_or_logs(created_key, default_model, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    plaintext = created_key.plaintext
    assert call(f"Bearer {plaintext}").status_code == 200
    api_key_revoke(api_key=created_key.api_key)
    assert call(f"Bearer {plaintext}").status_code == 401
    call_command("create_api_key", org="Acme", project="Default", stdout=open("/dev/null", "w"))

    # Every text column of every table of ours, in Postgres.
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')  # noqa: S608 - table names from introspection
            for row in cursor.fetchall():
                assert plaintext not in repr(row), table
                assert plaintext[len("sk-proj-"):] not in repr(row), table
    captured = capsys.readouterr()
    assert plaintext not in caplog.text
    assert plaintext not in captured.out + captured.err


def test_a_cached_key_is_authenticated_in_one_redis_round_trip(created_key, default_model, monkeypatch):
    """The address's failure count (the throttle) and the key's cache entry are read together: one
    command (``MGET``) reaches Redis to authenticate a key that is cached."""
    from redis.connection import AbstractConnection

    from accounts.authentication import APIKeyAuthentication

    assert call(f"Bearer {created_key.plaintext}").status_code == 200  # cached now, last_used_at written
    sent, send = [], AbstractConnection.send_command

    def spy(self, *args, **kwargs):
        sent.append(str(args[0]).upper())
        return send(self, *args, **kwargs)

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {created_key.plaintext}")
    request = api.get("/v1/models").wsgi_request  # a request, to authenticate again by hand
    monkeypatch.setattr(AbstractConnection, "send_command", spy)
    resolved, _ = APIKeyAuthentication().authenticate(request)
    assert resolved.key_id == created_key.api_key.pk
    assert sent == ["MGET"]
