"""OpenAI's Admin API (`administration.api`) through DRF's client: an admin key provisions a
project, a service account (its key returned once), model permissions and a per-model RPM, and the
new key is held to them; another organization sees none of it; project keys are refused; every
change is in the audit log, whoever made it."""
from __future__ import annotations

import sys
import time

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from accounts.models import APIKey
from accounts.services import admin_api_key_create, organization_get_or_create
from tests.conftest import assert_error, post_embeddings

pytestmark = pytest.mark.django_db

MODEL = "all-MiniLM-L6-v2"
OTHER = "test-matryoshka"


def bearer(key: str) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return api


@pytest.fixture
def admin(organization) -> APIClient:
    client = bearer(admin_api_key_create(organization=organization, name="ops").plaintext)
    client.key_id = organization.admin_api_keys.get(name="ops").public_id
    return client


@pytest.fixture
def stranger(db) -> APIClient:
    """An admin key of another organization."""
    return bearer(admin_api_key_create(organization=organization_get_or_create(name="Other Org")).plaintext)


def ok(response) -> dict:
    assert response.status_code == 200, response.content
    return response.json()


def provision(admin: APIClient) -> dict:
    """Project, service account (with its key), model allowlist and a per-model RPM of 2."""
    project = ok(admin.post("/v1/organization/projects", {"name": "Search"}, format="json"))
    pid = project["id"]
    account = ok(admin.post(f"/v1/organization/projects/{pid}/service_accounts", {"name": "indexer"}, format="json"))
    permissions = ok(admin.post(f"/v1/organization/projects/{pid}/model_permissions",
                                {"mode": "allow_list", "model_ids": [f"sentence-transformers/{MODEL}"]},
                                format="json"))
    limit = ok(admin.post(f"/v1/organization/projects/{pid}/rate_limits/rl-{MODEL}",
                          {"max_requests_per_1_minute": 2}, format="json"))
    return dict(project=project, account=account, permissions=permissions, limit=limit, pid=pid)


def test_an_admin_key_provisions_a_project_and_its_new_key_is_held_to_the_model_list_and_rpm(
        admin, default_model, matryoshka_model):
    made = provision(admin)
    assert made["project"]["object"] == "organization.project" and made["project"]["status"] == "active"
    account = made["account"]
    assert account["object"] == "organization.project.service_account" and account["role"] == "member"
    key = account["api_key"]
    assert key["object"] == "organization.project.service_account.api_key" and key["value"].startswith("sk-proj-")
    # The key is returned once: never again, by any route.
    pid = made["pid"]
    again = ok(admin.get(f"/v1/organization/projects/{pid}/service_accounts/{account['id']}"))
    listed = ok(admin.get(f"/v1/organization/projects/{pid}/api_keys"))
    assert key["value"] not in str(again) + str(listed)
    assert [k["id"] for k in listed["data"]] == [key["id"]]
    assert listed["data"][0]["owner"]["type"] == "service_account"
    assert listed["data"][0]["owner"]["service_account"]["id"] == account["id"]
    assert listed["data"][0]["redacted_value"].startswith("sk-proj-") and "..." in listed["data"][0]["redacted_value"]
    # The allowlist is stored by canonical name.
    assert made["permissions"] == {"object": "project.model_permissions", "mode": "allow_list", "model_ids": [MODEL]}
    assert made["limit"] == {"object": "project.rate_limit", "id": f"rl-{MODEL}", "model": MODEL,
                             "max_requests_per_1_minute": 2, "max_tokens_per_1_minute": None}

    user = bearer(key["value"])
    # Another model: 403 before tokenization (an input over the context length would be a 400 there).
    error = assert_error(post_embeddings(user, {"model": OTHER, "input": "word " * 5000}), 403, param="model",
                         code="model_not_allowed")
    assert OTHER in error["message"] and "project" in error["message"]
    assert [m["id"] for m in ok(user.get("/v1/models"))["data"]] == [MODEL, f"sentence-transformers/{MODEL}"]
    assert_error(user.get(f"/v1/models/{OTHER}"), 404, param=None, code="model_not_found")
    # The per-model RPM: two requests, then 429 naming the project and the model.
    for _ in range(2):
        assert post_embeddings(user, {"model": MODEL, "input": "hello"}).status_code == 200
    response = post_embeddings(user, {"model": MODEL, "input": "hello"})
    error = assert_error(response, 429, param=None, code="rate_limit_exceeded", type="requests")
    assert f"project {pid} for model {MODEL}" in error["message"] and "Limit 2" in error["message"]
    assert response["x-ratelimit-limit-requests"] == "2" and int(response["Retry-After"]) >= 1


def test_the_per_model_limit_leaves_other_models_of_the_project_alone(admin, default_model, matryoshka_model):
    pid = ok(admin.post("/v1/organization/projects", {"name": "P"}, format="json"))["id"]
    value = ok(admin.post(f"/v1/organization/projects/{pid}/service_accounts", {"name": "a"},
                          format="json"))["api_key"]["value"]
    ok(admin.post(f"/v1/organization/projects/{pid}/rate_limits/rl-{OTHER}", {"max_requests_per_1_minute": 1},
                  format="json"))
    user = bearer(value)
    assert post_embeddings(user, {"model": OTHER, "input": "a"}).status_code == 200
    assert post_embeddings(user, {"model": OTHER, "input": "a"}).status_code == 429
    for _ in range(3):
        assert post_embeddings(user, {"model": MODEL, "input": "a"}).status_code == 200
    listed = ok(admin.get(f"/v1/organization/projects/{pid}/rate_limits"))["data"]
    assert {r["model"]: r["max_requests_per_1_minute"] for r in listed} == {MODEL: None, OTHER: 1}
    # Cleared (null) = unlimited again.
    ok(admin.post(f"/v1/organization/projects/{pid}/rate_limits/rl-{OTHER}", {"max_requests_per_1_minute": None},
                  format="json"))
    assert post_embeddings(user, {"model": OTHER, "input": "a"}).status_code == 200


def test_a_key_allowlist_narrows_its_project_and_an_empty_one_allows_every_model(
        admin, project, created_key, default_model, matryoshka_model):
    route = f"/v1/organization/projects/{project.public_id}/api_keys/{created_key.api_key.public_id}"
    user = bearer(created_key.plaintext)
    assert ok(admin.post(route, {"allowed_models": [OTHER]}, format="json"))["allowed_models"] == [OTHER]
    error = assert_error(post_embeddings(user, {"model": MODEL, "input": "a"}), 403, param="model",
                         code="model_not_allowed")
    assert "key" in error["message"]
    assert [m["id"] for m in ok(user.get("/v1/models"))["data"]] == [OTHER]
    assert post_embeddings(user, {"model": OTHER, "input": "a"}).status_code == 200
    ok(admin.post(route, {"allowed_models": []}, format="json"))
    assert post_embeddings(user, {"model": MODEL, "input": "a"}).status_code == 200
    assert_error(admin.post(route, {"allowed_models": ["no-such-model"]}, format="json"), 400,
                 param="allowed_models", code="model_not_found")
    assert_error(admin.post(route, {"scopes": ["api.all.read"]}, format="json"), 400, param="scopes",
                 code="unsupported_parameter")
    # a field nothing knows (a typo, another API's) is refused too, never silently ignored
    assert_error(admin.post(route, {"nmae": "renamed"}, format="json"), 400, param="nmae", code="unknown_parameter")
    assert_error(admin.post("/v1/organization/projects", {"name": "ok", "extra": 1}, format="json"), 400,
                 param="extra", code="unknown_parameter")


def test_another_organizations_admin_key_sees_none_of_it(admin, stranger, default_model):
    made = provision(admin)
    pid, account, key = made["pid"], made["account"]["id"], made["account"]["api_key"]["id"]
    for method, path, body in [
            ("get", f"/v1/organization/projects/{pid}", None),
            ("post", f"/v1/organization/projects/{pid}", {"name": "mine"}),
            ("post", f"/v1/organization/projects/{pid}/archive", None),
            ("get", f"/v1/organization/projects/{pid}/api_keys", None),
            ("get", f"/v1/organization/projects/{pid}/api_keys/{key}", None),
            ("delete", f"/v1/organization/projects/{pid}/api_keys/{key}", None),
            ("get", f"/v1/organization/projects/{pid}/service_accounts", None),
            ("post", f"/v1/organization/projects/{pid}/service_accounts", {"name": "x"}),
            ("get", f"/v1/organization/projects/{pid}/service_accounts/{account}", None),
            ("delete", f"/v1/organization/projects/{pid}/service_accounts/{account}", None),
            ("get", f"/v1/organization/projects/{pid}/rate_limits", None),
            ("post", f"/v1/organization/projects/{pid}/rate_limits/rl-{MODEL}", {"max_requests_per_1_minute": 9}),
            ("get", f"/v1/organization/projects/{pid}/model_permissions", None),
            ("delete", f"/v1/organization/projects/{pid}/model_permissions", None)]:
        response = getattr(stranger, method)(path, body, format="json")
        assert_error(response, 404, param=None, code="not_found")
    assert ok(stranger.get("/v1/organization/projects?include_archived=true"))["data"] == []
    own = ok(stranger.get("/v1/organization/audit_logs"))["data"]  # only the creation of its own admin key
    assert [(e["type"], e["project"]) for e in own] == [("api_key.created", None)]
    # Nothing changed.
    assert ok(admin.get(f"/v1/organization/projects/{pid}"))["name"] == "Search"
    assert ok(admin.get(f"/v1/organization/projects/{pid}/rate_limits"))["data"][0]["max_requests_per_1_minute"] == 2


def test_a_project_key_on_the_admin_routes_gets_403(created_key, project, default_model):
    user = bearer(created_key.plaintext)
    pid = project.public_id
    for method, path in [("get", "/v1/organization/projects"), ("post", "/v1/organization/projects"),
                         ("get", f"/v1/organization/projects/{pid}"),
                         ("post", f"/v1/organization/projects/{pid}/archive"),
                         ("get", f"/v1/organization/projects/{pid}/api_keys"),
                         ("post", f"/v1/organization/projects/{pid}/service_accounts"),
                         ("get", f"/v1/organization/projects/{pid}/rate_limits"),
                         ("post", f"/v1/organization/projects/{pid}/rate_limits/rl-{MODEL}"),
                         ("post", f"/v1/organization/projects/{pid}/model_permissions"),
                         ("get", "/v1/organization/audit_logs")]:
        assert_error(getattr(user, method)(path, {"name": "x"}, format="json"), 403, param=None,
                     code="admin_key_required")
    assert project.api_keys.count() == 1 and project.service_accounts.count() == 0


def test_every_change_through_the_api_is_in_the_audit_log_with_the_admin_key_as_actor(admin, default_model):
    made = provision(admin)
    pid, key_id = made["pid"], made["account"]["api_key"]["id"]
    ok(admin.post(f"/v1/organization/projects/{pid}", {"name": "Search v2"}, format="json"))
    ok(admin.post(f"/v1/organization/projects/{pid}/api_keys/{key_id}", {"expires_in_seconds": 3600},
                  format="json"))
    ok(admin.delete(f"/v1/organization/projects/{pid}/api_keys/{key_id}"))
    ok(admin.delete(f"/v1/organization/projects/{pid}/service_accounts/{made['account']['id']}"))
    ok(admin.post(f"/v1/organization/projects/{pid}/archive"))

    entries = list(reversed(ok(admin.get(f"/v1/organization/audit_logs?project_ids={pid}&limit=100"))["data"]))
    assert [e["type"] for e in entries] == [
        "project.created", "service_account.created", "api_key.created", "project.updated", "rate_limit.updated",
        "project.updated", "api_key.updated", "api_key.deleted", "service_account.deleted", "project.archived"]
    for entry in entries:
        assert entry["actor"] == {"type": "api_key", "api_key": {"id": admin.key_id, "type": "admin"}}
        assert entry["project"] == {"id": pid, "name": entry["project"]["name"]}
        assert entry["id"].startswith("audit_log-") and entry["effective_at"] <= time.time()
    by_type = {e["type"]: e[e["type"]] for e in entries}
    assert by_type["project.created"] == {"id": pid, "data": {"name": "Search", "title": "Search",
                                                              "allowed_models": []}}
    assert entries[3]["project.updated"] == {"id": pid, "changes_requested": {"allowed_models": [MODEL]}}
    assert by_type["rate_limit.updated"]["changes_requested"] == {"max_requests_per_1_minute": 2}
    assert by_type["rate_limit.updated"]["id"] == f"rl-{MODEL}"
    assert entries[5]["project.updated"]["changes_requested"] == {"name": "Search v2", "title": "Search v2"}
    assert set(by_type["api_key.updated"]["changes_requested"]) == {"expires_at"}
    assert by_type["api_key.deleted"] == {"id": key_id}

    # OpenAI's filters and cursors.
    only = ok(admin.get("/v1/organization/audit_logs", {"event_types[]": "project.archived"}))["data"]
    assert [e["type"] for e in only] == ["project.archived"]
    assert [e["type"] for e in ok(admin.get("/v1/organization/audit_logs", {"resource_ids": key_id}))["data"]] == [
        "api_key.deleted", "api_key.updated", "api_key.created"]
    assert ok(admin.get("/v1/organization/audit_logs", {"actor_ids": "key_nobody"}))["data"] == []
    future = int(time.time()) + 60
    assert ok(admin.get("/v1/organization/audit_logs", {"effective_at[gt]": future}))["data"] == []
    first = ok(admin.get("/v1/organization/audit_logs", {"limit": 4}))
    assert first["has_more"] and len(first["data"]) == 4
    second = ok(admin.get("/v1/organization/audit_logs", {"limit": 4, "after": first["last_id"]}))
    back = ok(admin.get("/v1/organization/audit_logs", {"limit": 4, "before": second["first_id"]}))
    assert [e["id"] for e in back["data"]] == [e["id"] for e in first["data"]]
    assert not set(e["id"] for e in first["data"]) & set(e["id"] for e in second["data"])


def test_projects_list_archive_and_rename(admin, default_model):
    ids = [ok(admin.post("/v1/organization/projects", {"name": f"P{i}"}, format="json"))["id"] for i in range(3)]
    archived = ok(admin.post(f"/v1/organization/projects/{ids[0]}/archive"))
    assert archived["status"] == "archived" and archived["archived_at"]
    page = ok(admin.get("/v1/organization/projects", {"limit": 1}))
    assert [p["id"] for p in page["data"]] == [ids[1]] and page["has_more"]
    rest = ok(admin.get("/v1/organization/projects", {"limit": 5, "after": page["last_id"]}))
    assert [p["id"] for p in rest["data"]] == [ids[2]] and not rest["has_more"]
    every = ok(admin.get("/v1/organization/projects", {"include_archived": "true", "limit": 100}))
    assert [p["id"] for p in every["data"]][-3:] == ids
    assert_error(admin.post(f"/v1/organization/projects/{ids[1]}", {"name": "p2"}, format="json"), 400,
                 param="name", code="duplicate_name")
    assert_error(admin.post(f"/v1/organization/projects/{ids[0]}/service_accounts", {"name": "late"},
                            format="json"), 400, param=None, code="project_archived")
    assert_error(admin.get("/v1/organization/projects", {"after": "proj_nope"}), 400, param="after",
                 code="invalid_value")


def test_deleted_keys_and_service_accounts_stop_working_at_once(admin, default_model):
    made = provision(admin)
    pid, account = made["pid"], made["account"]
    user = bearer(account["api_key"]["value"])
    assert post_embeddings(user, {"model": MODEL, "input": "a"}).status_code == 200
    assert ok(admin.delete(f"/v1/organization/projects/{pid}/service_accounts/{account['id']}")) == {
        "object": "organization.project.service_account.deleted", "id": account["id"], "deleted": True}
    assert_error(post_embeddings(user, {"model": MODEL, "input": "a"}), 401, param=None, code="invalid_api_key")
    assert ok(admin.get(f"/v1/organization/projects/{pid}/api_keys"))["data"] == []
    assert_error(admin.get(f"/v1/organization/projects/{pid}/api_keys/{account['api_key']['id']}"), 404,
                 param=None, code="not_found")


def test_model_permissions_and_rate_limit_bodies_are_checked(admin, project, default_model):
    route = f"/v1/organization/projects/{project.public_id}"
    assert ok(admin.get(f"{route}/model_permissions")) == {"object": "project.model_permissions",
                                                           "mode": "deny_list", "model_ids": []}
    assert_error(admin.post(f"{route}/model_permissions", {"mode": "allow_list", "model_ids": []}, format="json"),
                 400, param="model_ids", code="invalid_value")
    assert_error(admin.post(f"{route}/model_permissions", {"mode": "deny_list", "model_ids": [MODEL]},
                            format="json"), 400, param="mode", code="unsupported_value")
    assert_error(admin.post(f"{route}/model_permissions", {"mode": "allow_list", "model_ids": ["gpt-4"]},
                            format="json"), 400, param="model_ids", code="model_not_found")
    ok(admin.post(f"{route}/model_permissions", {"mode": "allow_list", "model_ids": [MODEL]}, format="json"))
    assert ok(admin.delete(f"{route}/model_permissions")) == {"object": "project.model_permissions.deleted",
                                                             "deleted": True}
    project.refresh_from_db()
    assert project.allowed_models == []
    assert_error(admin.post(f"{route}/rate_limits/rl-gpt-4", {"max_requests_per_1_minute": 1}, format="json"),
                 404, param=None, code="not_found")
    assert_error(admin.post(f"{route}/rate_limits/rl-{MODEL}", {"max_images_per_1_minute": 1}, format="json"),
                 400, param="max_images_per_1_minute", code="unsupported_parameter")
    assert_error(admin.post(f"{route}/rate_limits/rl-{MODEL}", {"max_tokens_per_1_minute": -1}, format="json"),
                 400, param="max_tokens_per_1_minute", code="invalid_value")


def test_changes_through_the_console_the_django_admin_and_a_command_are_in_the_audit_log(
        admin, organization, project, created_key, default_model, django_user_model, monkeypatch):
    from accounts.models import Membership
    from accounts.services import membership_add
    from tests.console.conftest import signed_in

    owner = django_user_model.objects.create_user(username="olga", email="olga@example.com", password="x",
                                                  is_staff=True, is_superuser=True)
    membership_add(organization=organization, user=owner, role=Membership.Role.OWNER)
    browser = signed_in(owner)
    response = browser.post(f"/console/orgs/{organization.public_id}/projects/{project.public_id}/models/",
                            {"models": [MODEL]})
    assert response.status_code == 302, response.content
    response = browser.post(f"/admin/accounts/project/{project.pk}/change/",
                            {"name": "Renamed", "organization": organization.pk, "allowed_models": MODEL,
                             "archived_at_0": "", "archived_at_1": ""})
    assert response.status_code == 302, response.content
    monkeypatch.setattr(sys, "argv", ["manage.py", "set_allowed_models"])
    call_command("set_allowed_models", "--org", organization.name, "--project", project.public_id,
                 "--key", created_key.api_key.public_id, "--models", MODEL, stdout=open("/dev/null", "w"))

    entries = ok(admin.get("/v1/organization/audit_logs", {"limit": 3}))["data"]
    command, django_admin, console = entries
    assert console["type"] == "project.updated" and console["project.updated"]["changes_requested"] == {
        "allowed_models": [MODEL]}
    assert console["actor"]["session"]["user"] == {"id": f"user-{owner.pk}", "email": "olga@example.com",
                                                   "username": "olga"}
    assert console["actor"]["type"] == "session" and console["actor"]["session"]["source"] == "console"
    assert django_admin["actor"]["session"]["source"] == "admin"
    assert django_admin["project.updated"]["changes_requested"] == {"name": "Renamed", "title": "Renamed"}
    assert command["type"] == "api_key.updated"
    assert command["actor"]["type"] == "command" and command["actor"]["command"]["name"] == "set_allowed_models"
    assert command["api_key.updated"] == {"id": created_key.api_key.public_id,
                                          "changes_requested": {"allowed_models": [MODEL]}}
    assert APIKey.objects.get(pk=created_key.api_key.pk).allowed_models == [MODEL]

    # The console's page shows them, to owners and admins.
    page = browser.get(f"/console/orgs/{organization.public_id}/audit-log/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "manage.py set_allowed_models" in html and "olga (console)" in html and "olga (admin)" in html


def test_deleting_a_project_is_logged_with_its_cascade_and_an_organization_takes_its_log(
        admin, organization, project, created_key, default_model):
    from django.db import connection

    from accounts.models import AuditLog
    from accounts.services import service_account_create
    from limits.services import limit_set

    service_account_create(project=project, name="bot")
    limit_set(organization=organization, project=project, model=MODEL, rpm=5)
    project.delete()
    types = [e["type"] for e in ok(admin.get("/v1/organization/audit_logs",
                                             {"project_ids": project.public_id, "limit": 100}))["data"]]
    assert types[0] == "project.deleted" and {"api_key.deleted", "service_account.deleted",
                                              "rate_limit.deleted"} <= set(types[1:])
    organization.delete()
    connection.check_constraints()  # no entry was written for the organization being deleted
    assert not AuditLog.objects.exists()


def test_a_request_starts_with_no_organization_muted_in_the_audit_log():
    """A pool thread keeps its context between requests: an organization whose delete failed
    halfway (its post_delete never ran) is not left muted for that thread's later requests."""
    from accounts import audit

    audit.organization_delete_begins(42)  # a delete that never ended, in this thread
    seen = []
    middleware = audit.AuditActorMiddleware(lambda request: seen.append(audit._deleting.get()))
    middleware(object())
    assert seen == [frozenset()]
    assert audit._deleting.get() == frozenset({42})  # the middleware restores what it found
    audit.organization_delete_ends(42)
