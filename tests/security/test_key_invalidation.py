"""Every change that makes a key invalid takes effect on the next request, whatever path makes
it (issue 11, item 6): each one goes through `accounts.services.api_key_cache_invalidate`
(directly or through `accounts.signals`). Each test first makes a request, so the key's lookup is
cached as valid (for ``API_KEY_CACHE_SECONDS``), then changes the key and expects a 401. A key
deleted while its request is being served never gives a 500."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import AdminAPIKey, APIKey, Membership, Organization, Project
from accounts.services import admin_api_key_create, membership_add
from metering.models import UsageRecord
from tests.accounts.test_console_admin import staff  # noqa: F401 - the superuser's admin client
from tests.conftest import assert_error, post_embeddings

BODY = {"model": "all-MiniLM-L6-v2", "input": "hi"}


@pytest.fixture(autouse=True)
def _long_key_cache(settings):
    """A cache entry outlives every test: only an invalidation can make the change seen."""
    settings.API_KEY_CACHE_SECONDS = 300


def models(plaintext: str):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return api.get("/v1/models")


def assert_refused(plaintext: str, word: str | None = None):
    error = assert_error(models(plaintext), 401, param=None, code="invalid_api_key")
    if word:
        assert word in error["message"], error


@pytest.fixture
def cached_key(created_key):
    """A key whose lookup is cached as valid."""
    assert models(created_key.plaintext).status_code == 200
    return created_key


def split_datetime(value) -> dict[str, str]:
    return {"0": value.strftime("%Y-%m-%d"), "1": value.strftime("%H:%M:%S")}


def test_console_revoke(cached_key, project, django_user_model):
    from django.test import Client

    owner = django_user_model.objects.create_user(username="olga", password="a-long-test-password-42")
    membership_add(organization=project.organization, user=owner, role=Membership.Role.OWNER)
    console = Client()
    console.force_login(owner, backend="django.contrib.auth.backends.ModelBackend")
    url = reverse("console:key-revoke", kwargs={"org": project.organization.public_id,
                                                 "project": project.public_id, "key": cached_key.api_key.public_id})
    assert console.post(url).status_code == 302
    assert_refused(cached_key.plaintext, "revoked")


def test_admin_change_form_expires_at_in_the_past(staff, cached_key):  # noqa: F811
    past = timezone.now() - timedelta(minutes=1)
    url = reverse("admin:accounts_apikey_change", args=[cached_key.api_key.pk])
    response = staff.post(url, {"name": "test", **{f"expires_at_{i}": v for i, v in split_datetime(past).items()}})
    assert response.status_code == 302, response.content
    assert_refused(cached_key.plaintext, "expired")


def test_admin_delete(staff, cached_key):  # noqa: F811
    url = reverse("admin:accounts_apikey_delete", args=[cached_key.api_key.pk])
    assert staff.post(url, {"post": "yes"}).status_code == 302
    assert not APIKey.objects.exists()
    assert_refused(cached_key.plaintext, "Incorrect API key")


def test_admin_bulk_delete_action(staff, cached_key, project):  # noqa: F811
    from accounts.services import api_key_create

    other = api_key_create(project=project, name="other")
    assert models(other.plaintext).status_code == 200
    response = staff.post(reverse("admin:accounts_apikey_changelist"),
                          {"action": "delete_selected", "post": "yes",
                           "_selected_action": [cached_key.api_key.pk, other.api_key.pk]})
    assert response.status_code == 302
    assert not APIKey.objects.exists()
    assert_refused(cached_key.plaintext)
    assert_refused(other.plaintext)


def test_admin_project_archive(staff, cached_key, project):  # noqa: F811
    url = reverse("admin:accounts_project_change", args=[project.pk])
    now = split_datetime(timezone.now())
    response = staff.post(url, {"name": project.name, "organization": project.organization_id,
                                **{f"archived_at_{i}": v for i, v in now.items()}})
    assert response.status_code == 302, response.content
    assert_refused(cached_key.plaintext, "archived")


def test_admin_project_delete(staff, cached_key, project):  # noqa: F811
    assert staff.post(reverse("admin:accounts_project_delete", args=[project.pk]), {"post": "yes"}).status_code == 302
    assert not Project.objects.exists()
    assert_refused(cached_key.plaintext)


def test_admin_organization_delete(staff, cached_key, organization):  # noqa: F811
    admin_key = admin_api_key_create(organization=organization)
    usage = APIClient()
    usage.credentials(HTTP_AUTHORIZATION=f"Bearer {admin_key.plaintext}")
    assert usage.get("/v1/organization/usage/embeddings?start_time=0").status_code == 200
    url = reverse("admin:accounts_organization_delete", args=[organization.pk])
    assert staff.post(url, {"post": "yes"}).status_code == 302
    assert not Organization.objects.exists()
    assert_refused(cached_key.plaintext)
    assert_error(usage.get("/v1/organization/usage/embeddings?start_time=0"), 401, param=None,
                 code="invalid_api_key")


def test_admin_key_change_form(staff, organization):  # noqa: F811
    admin_key = admin_api_key_create(organization=organization)
    usage = APIClient()
    usage.credentials(HTTP_AUTHORIZATION=f"Bearer {admin_key.plaintext}")
    assert usage.get("/v1/organization/usage/embeddings?start_time=0").status_code == 200
    past = split_datetime(timezone.now() - timedelta(minutes=1))
    response = staff.post(reverse("admin:accounts_adminapikey_change", args=[admin_key.admin_api_key.pk]),
                          {"name": "", **{f"expires_at_{i}": v for i, v in past.items()}})
    assert response.status_code == 302, response.content
    error = assert_error(usage.get("/v1/organization/usage/embeddings?start_time=0"), 401, param=None,
                         code="invalid_api_key")
    assert "expired" in error["message"]


def test_management_command_revoke_api_key(cached_key, organization, capsys):
    admin_key = admin_api_key_create(organization=organization).admin_api_key
    call_command("revoke_api_key", cached_key.api_key.public_id, admin_key.public_id)
    assert capsys.readouterr().out.count("Revoked key_") == 2
    assert_refused(cached_key.plaintext, "revoked")
    assert AdminAPIKey.objects.get().revoked_at is not None


def test_management_command_revoke_unknown_id_is_an_error(db):
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="key_nope"):
        call_command("revoke_api_key", "key_nope")


def test_shell_save_and_queryset_delete(cached_key, project):
    """What a ``manage.py shell`` user would do: ``save()`` and ``QuerySet.delete()`` are seen."""
    key = APIKey.objects.get()
    key.expires_at = timezone.now() - timedelta(seconds=1)
    key.save()
    assert_refused(cached_key.plaintext, "expired")
    key.expires_at = None
    key.save()
    assert models(cached_key.plaintext).status_code == 200
    APIKey.objects.filter(project=project).delete()
    assert_refused(cached_key.plaintext, "Incorrect API key")


# --- A key deleted while its request is being served ---------------------------------------------

def _delete_during_encoding(monkeypatch, delete):
    """Run ``delete()`` (committed: the test runs outside a transaction) after admission, while
    the request is encoded: the usage insert then meets a missing row."""
    import embeddings.services

    encode = embeddings.services.encode_inputs

    def encode_then_delete(**kwargs):
        vectors = encode(**kwargs)
        delete()
        return vectors

    monkeypatch.setattr(embeddings.services, "encode_inputs", encode_then_delete)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["project", "admin"])
def test_a_revocation_between_a_readers_lookup_and_its_cache_write_is_not_undone(created_key, organization,
                                                                                    monkeypatch, settings, kind):
    """A request that read the key from the database just before a revocation committed, and wrote
    its cache entry just after the revocation dropped the entry, put the valid key back in the cache
    for API_KEY_CACHE_SECONDS: every process accepted the revoked key (a probe forced the interleaving
    and got five 200s). The revocation now leaves a mark the reader's write cannot replace."""
    import threading

    from django.db import connections

    import accounts.selectors as selectors
    from accounts.services import admin_api_key_revoke, api_key_revoke

    if kind == "project":
        plaintext, revoke = created_key.plaintext, lambda: api_key_revoke(api_key=created_key.api_key)
        resolve, resolved_class = selectors.api_key_resolve, selectors.ResolvedKey
    else:
        admin = admin_api_key_create(organization=organization, name="ops")
        plaintext, revoke = admin.plaintext, lambda: admin_api_key_revoke(admin_api_key=admin.admin_api_key)
        resolve, resolved_class = selectors.admin_api_key_resolve, selectors.ResolvedAdminKey
    from_model = resolved_class.from_model

    def revoked_meanwhile(row):  # after the reader's SELECT, before its cache write
        def run():
            try:
                revoke()
            finally:
                connections.close_all()
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        return from_model(row)

    monkeypatch.setattr(resolved_class, "from_model", staticmethod(revoked_meanwhile))
    assert resolve(plaintext=plaintext).revoked_at is None  # what it read, before the revocation
    monkeypatch.setattr(resolved_class, "from_model", staticmethod(from_model))
    assert resolve(plaintext=plaintext).revoked_at is not None
    # the mark outlives API_KEY_CACHE_SECONDS by a margin: a write checked in time but delayed on
    # its way to Redis (client timeouts, a stalled process) still finds it there
    from django.core.cache import cache

    from accounts.services import (INVALIDATED_MARGIN_SECONDS, admin_api_key_cache_key, api_key_cache_key,
                                   hash_key)
    name = (api_key_cache_key if kind == "project" else admin_api_key_cache_key)(hash_key(plaintext))
    assert cache.ttl(name) > settings.API_KEY_CACHE_SECONDS + INVALIDATED_MARGIN_SECONDS - 10
    if kind == "project":
        assert_refused(plaintext, "revoked")
    else:
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
        assert_error(api.get("/v1/organization/projects"), 401, param=None, code="invalid_api_key")


@pytest.mark.django_db(transaction=True)
def test_key_deleted_mid_request_is_served_and_billed_to_its_project(client, created_key, project, monkeypatch,
                                                                     settings):
    """The record written after the encode (a request of a busy process; here forced) meets the key
    gone, and is written without it."""
    settings.EMBEDDINGS_METER_ALONGSIDE = False
    _delete_during_encoding(monkeypatch, lambda: APIKey.objects.filter(pk=created_key.api_key.pk).delete())
    response = post_embeddings(client, BODY)
    assert response.status_code == 200, response.content
    record = UsageRecord.objects.get()
    assert (record.api_key_id, record.project_id, record.total_tokens) == (None, project.pk,
                                                                           response.json()["usage"]["total_tokens"])
    monkeypatch.undo()
    assert_error(post_embeddings(client, BODY), 401, param=None, code="invalid_api_key")


@pytest.mark.django_db(transaction=True)
def test_key_deleted_as_its_record_is_written_alongside(client, created_key, project, monkeypatch):
    """A lone request's record, written while it encodes, committed after the key delete nulled the
    key's records but before it deleted the key (the two statements Django's ``SET_NULL`` sends;
    here the record is held until then): the delete succeeds (the database nulls the record's key:
    metering.0002), the request is served and billed to its project, and the key is refused next."""
    import threading

    import embeddings.services
    import metering.services
    from django.db.models.sql.subqueries import DeleteQuery

    nulled, recorded, outcome = threading.Event(), threading.Event(), []
    write, delete_batch, encode = (metering.services._write_on_the_metering_thread, DeleteQuery.delete_batch,
                                   embeddings.services.encode_inputs)

    def write_once_nulled(fields):
        assert nulled.wait(30)
        try:
            return write(fields)
        finally:
            recorded.set()

    def delete_after_the_record(self, pk_list, using):
        if self.model is APIKey:
            nulled.set()
            assert recorded.wait(30)
        return delete_batch(self, pk_list, using)

    def encode_then_delete(**kwargs):
        vectors = encode(**kwargs)
        try:
            outcome.append(APIKey.objects.filter(pk=created_key.api_key.pk).delete()[0])
        except Exception as exc:  # noqa: BLE001 - the delete's outcome is what is asserted
            outcome.append(exc)
        return vectors

    monkeypatch.setattr(metering.services, "_write_on_the_metering_thread", write_once_nulled)
    monkeypatch.setattr(DeleteQuery, "delete_batch", delete_after_the_record)
    monkeypatch.setattr(embeddings.services, "encode_inputs", encode_then_delete)
    response = post_embeddings(client, BODY)
    assert response.status_code == 200, response.content
    assert outcome and not isinstance(outcome[0], Exception), outcome
    assert not APIKey.objects.filter(pk=created_key.api_key.pk).exists()
    record = UsageRecord.objects.get()
    assert (record.api_key_id, record.project_id, record.total_tokens) == (None, project.pk,
                                                                           response.json()["usage"]["total_tokens"])
    monkeypatch.undo()
    assert_error(post_embeddings(client, BODY), 401, param=None, code="invalid_api_key")


def test_the_database_itself_nulls_a_deleted_keys_records_and_batches(db):
    """The key constraints of usage records and batches are ON DELETE SET NULL in PostgreSQL (a
    later migration that recreates one must keep it), deferred, and validated."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("""SELECT conrelid::regclass::text, confdeltype, condeferred, convalidated
                          FROM pg_constraint JOIN pg_attribute ON attrelid = conrelid AND attnum = ANY (conkey)
                          WHERE contype = 'f' AND attname = 'api_key_id'
                            AND conrelid::regclass::text IN ('billing_usagerecord', 'batches_batch')""")
        assert sorted(cursor.fetchall()) == [("batches_batch", "n", True, True), ("billing_usagerecord", "n", True, True)]


@pytest.mark.django_db(transaction=True)
def test_project_deleted_mid_request_is_401_and_billed_nowhere(client, created_key, project, monkeypatch, settings):
    """The record written after the encode (a request of a busy process; here forced) meets the
    project gone."""
    settings.EMBEDDINGS_METER_ALONGSIDE = False
    _delete_during_encoding(monkeypatch, lambda: Project.objects.filter(pk=project.pk).delete())
    response = post_embeddings(client, BODY)
    error = assert_error(response, 401, param=None, code="invalid_api_key")
    assert "deleted while the request was served" in error["message"]
    assert not UsageRecord.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_project_is_not_deleted_while_its_lone_requests_record_exists(client, created_key, project, monkeypatch):
    """A lone request's record is written while it encodes: a delete of its project from another
    request meanwhile is refused (usage records protect their project, as after any metered
    request), and the request is served and billed once."""
    import threading
    import time

    from django.db import connections
    from django.db.models import ProtectedError

    outcome = []

    def delete_from_another_thread():
        def run():
            try:
                deadline = time.monotonic() + 10
                while not UsageRecord.objects.exists():  # written alongside the encode
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                Project.objects.filter(pk=project.pk).delete()
                outcome.append("deleted")
            except ProtectedError:
                outcome.append("protected")
            finally:
                connections.close_all()

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()

    _delete_during_encoding(monkeypatch, delete_from_another_thread)
    response = post_embeddings(client, BODY)
    assert response.status_code == 200, response.content
    assert outcome == ["protected"]
    record = UsageRecord.objects.get()
    assert (record.project_id, record.total_tokens) == (project.pk, response.json()["usage"]["total_tokens"])
