"""The OpenAPI schema is a contract: schemathesis generates requests from it (valid and invalid,
bounded) and sends them through the real Django app with a project key and an admin key; every
answer must be documented (status, content type, body schema) and none may be a 5xx."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings as hypothesis_settings
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from config.wsgi import application

schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
# Valid and invalid requests (wrong types, missing fields, NUL bytes, out-of-range numbers).
schema.config.generation.update(modes=list(schemathesis.GenerationMode), allow_x00=True)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def _connection_kept_across_requests():
    """The WSGI handler closes the database connection after each request (``request_finished``),
    which would end the test's transaction; Django's test client keeps it open the same way."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def keys(default_model, created_key, organization, _connection_kept_across_requests):
    """``{"project": "sk-proj-...", "admin": "sk-admin-..."}`` of one organization."""
    from accounts.services import admin_api_key_create
    from limits.services import limit_set

    limit_set(organization=organization, rpm=None, tpm=None, monthly_tokens=None)
    return {"project": created_key.plaintext,
            "admin": admin_api_key_create(organization=organization, name="schemathesis").plaintext}


# OpenAI's Admin API (19 operations, each a few writes): fewer examples each, to keep the suite's time.
ADMIN_API = r"^/v1/organization/(projects|audit_logs)"


def call_and_validate(case, keys) -> None:
    kind = "admin" if case.path.startswith("/v1/organization/") else "project"
    case.call_and_validate(headers={"Authorization": f"Bearer {keys[kind]}"}, checks=CHECKS)


@pytest.mark.django_db
@schema.exclude(path_regex=ADMIN_API).parametrize()
@hypothesis_settings(max_examples=40, deadline=None, derandomize=True,
                     suppress_health_check=list(HealthCheck))
def test_every_answer_is_documented_and_none_is_a_5xx(case, keys):
    call_and_validate(case, keys)


@pytest.mark.django_db
@schema.include(path_regex=ADMIN_API).parametrize()
@hypothesis_settings(max_examples=8, deadline=None, derandomize=True,
                     suppress_health_check=list(HealthCheck))
def test_every_admin_api_answer_is_documented_and_none_is_a_5xx(case, keys):
    call_and_validate(case, keys)


@pytest.mark.django_db
def test_the_schema_is_public_whatever_the_authorization_header(keys):
    from django.test import Client

    for header in (None, "Bearer sk-not-a-key", f"Bearer {keys['admin']}", f"Bearer {keys['project']}", "Basic x"):
        extra = {} if header is None else {"HTTP_AUTHORIZATION": header}
        assert Client().get("/api/schema/", **extra).status_code == 200, header
        assert Client().get("/api/docs/", **extra).status_code == 200, header
