"""The Django admin for staff (keys created with the plaintext shown once, revoke action,
hash never shown, read-only usage records with filters) and the first-run command."""
from __future__ import annotations

import re

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from accounts.models import APIKey, Membership, Organization
from accounts.services import api_key_create, hash_key
from metering.models import UsageRecord
from tests.conftest import assert_error, post_embeddings


@pytest.fixture
def staff(db, django_user_model):
    user = django_user_model.objects.create_superuser(username="root", email="root@example.com",
                                                      password="a-long-test-password-42")
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    return client


def test_admin_creates_a_key_and_shows_the_plaintext_once(staff, project):
    add_url = reverse("admin:accounts_apikey_add")
    assert staff.get(add_url).status_code == 200
    refused = staff.post(add_url, {"project": project.pk, "name": "x", "expires_at": "2000-01-01 00:00"})
    assert refused.status_code == 400 and b"Pick a time in the future." in refused.content
    response = staff.post(add_url, {"project": project.pk, "name": "from-admin"})
    assert response.status_code == 200
    plaintext = re.search(r'value="(sk-proj-[A-Za-z0-9]+)"', response.content.decode()).group(1)
    key = APIKey.objects.get(name="from-admin")
    assert key.secret_hash == hash_key(plaintext)
    for url in (reverse("admin:accounts_apikey_changelist"), reverse("admin:accounts_apikey_change", args=[key.pk])):
        page = staff.get(url).content.decode()
        assert key.masked in page and plaintext not in page and key.secret_hash not in page


def test_admin_revoke_action_makes_the_key_fail_at_once(staff, client, created_key):
    assert post_embeddings(client, {"model": "all-MiniLM-L6-v2", "input": "hi"}).status_code == 200
    response = staff.post(reverse("admin:accounts_apikey_changelist"),
                          {"action": "revoke_keys", "_selected_action": [created_key.api_key.pk]})
    assert response.status_code == 302
    created_key.api_key.refresh_from_db()
    assert created_key.api_key.revoked_at is not None
    assert_error(post_embeddings(client, {"model": "all-MiniLM-L6-v2", "input": "hi"}), 401, param=None,
                 code="invalid_api_key")
    active = staff.get(reverse("admin:accounts_apikey_changelist"), {"status": "active"})
    revoked = staff.get(reverse("admin:accounts_apikey_changelist"), {"status": "revoked"})
    assert list(active.context["cl"].queryset) == [] and list(revoked.context["cl"].queryset) == [created_key.api_key]


def test_admin_cannot_move_a_project_membership_or_limit_to_another_organization(staff, client, project,
                                                                                 created_key, django_user_model):
    """Owners are chosen when an object is added: a project saved with another organization's id (a
    probe moved one, its keys then billed to the other tenant) keeps its organization; so do a
    membership and a limit. The rest of the form still saves."""
    from limits.models import Limit
    from limits.services import limit_set

    other = Organization.objects.create(name="Other")
    response = staff.post(reverse("admin:accounts_project_change", args=[project.pk]),
                          {"name": "Renamed", "organization": other.pk, "allowed_models": "",
                           "archived_at_0": "", "archived_at_1": ""})
    assert response.status_code == 302, response.content
    project.refresh_from_db()
    assert (project.name, project.organization_id) == ("Renamed", created_key.api_key.project.organization_id)
    assert post_embeddings(client, {"model": "all-MiniLM-L6-v2", "input": "hi"}).status_code == 200
    assert UsageRecord.objects.get().organization_id == project.organization_id

    member = Membership.objects.create(organization=project.organization, role=Membership.Role.MEMBER,
                                       user=django_user_model.objects.create_user(username="mia"))
    response = staff.post(reverse("admin:accounts_membership_change", args=[member.pk]),
                          {"user": member.user_id, "organization": other.pk, "role": "admin"})
    assert response.status_code == 302, response.content
    member.refresh_from_db()
    assert (member.organization_id, member.role) == (project.organization_id, "admin")

    # nor through the organization page's membership rows (a new row still picks its user)
    mallory, newcomer = (django_user_model.objects.create_user(username=name) for name in ("mallory", "nia"))
    organization = project.organization
    form = {"name": organization.name,
            "memberships-TOTAL_FORMS": "2", "memberships-INITIAL_FORMS": "1", "memberships-MIN_NUM_FORMS": "0",
            "memberships-MAX_NUM_FORMS": "1000", "memberships-0-id": member.pk,
            "memberships-0-organization": organization.pk, "memberships-0-user": mallory.pk,
            "memberships-0-role": "reader", "memberships-1-organization": organization.pk,
            "memberships-1-user": newcomer.pk, "memberships-1-role": "member",
            "projects-TOTAL_FORMS": "0", "projects-INITIAL_FORMS": "0", "projects-MIN_NUM_FORMS": "0",
            "projects-MAX_NUM_FORMS": "1000"}
    response = staff.post(reverse("admin:accounts_organization_change", args=[organization.pk]), form)
    assert response.status_code == 302, response.context["errors"] if response.context else response.content
    member.refresh_from_db()
    assert (member.user.username, member.role) == ("mia", "reader")
    assert Membership.objects.get(user=newcomer).organization_id == organization.pk

    limit_set(organization=project.organization, project=project, rpm=5)
    limit = Limit.objects.get()
    page = staff.get(reverse("admin:limits_limit_change", args=[limit.pk])).content.decode()
    assert 'name="organization"' not in page and 'name="project"' not in page and 'name="rpm"' in page
    assert 'name="organization"' in staff.get(reverse("admin:limits_limit_add")).content.decode()


def test_admin_usage_records_are_read_only_and_filterable(staff, client, created_key, default_model):
    for text in ("one", "two"):
        post_embeddings(client, {"model": "all-MiniLM-L6-v2", "input": text})
    other = api_key_create(project=created_key.api_key.project, name="other").api_key
    url = reverse("admin:metering_usagerecord_changelist")
    record = UsageRecord.objects.first()
    day = record.created_at
    for params, expected in [({}, 2), ({"organization__id__exact": record.organization_id}, 2),
                             ({"project__id__exact": record.project_id}, 2),
                             ({"api_key__id__exact": created_key.api_key.pk}, 2),
                             ({"api_key__id__exact": other.pk}, 0),
                             ({"model__id__exact": default_model.pk}, 2),
                             ({"created_at__year": day.year, "created_at__month": day.month,
                               "created_at__day": day.day}, 2)]:
        response = staff.get(url, params)
        assert response.status_code == 200 and response.context["cl"].result_count == expected, params
    assert staff.get(reverse("admin:metering_usagerecord_add")).status_code == 403
    change = staff.get(reverse("admin:metering_usagerecord_change", args=[record.pk]))
    assert change.status_code == 200 and b'name="_save"' not in change.content
    # the admin's old address (before usage records moved to `metering`) still leads there
    old = staff.get(f"/admin/billing/usagerecord/{record.pk}/change/")
    assert old.status_code == 301 and old["Location"] == reverse("admin:metering_usagerecord_change", args=[record.pk])
    escaped = staff.get("/admin/billing/usagerecord/%3Fnext=x/", {"q": "1"})
    assert escaped["Location"] == reverse("admin:metering_usagerecord_changelist") + "%3Fnext%3Dx/?q=1"


def test_create_console_user_gives_a_working_sign_in(db, capsys):
    call_command("create_console_user", "--username", "first", "--org", "New Co", "--staff")
    out = capsys.readouterr().out
    password = re.search(r"with password (\S+)\.", out).group(1)
    assert "Sign in at http://127.0.0.1:8000/console/login/ as first" in out
    organization = Organization.objects.get(name="New Co")
    membership = Membership.objects.get(organization=organization, user__username="first")
    assert membership.role == "owner" and membership.user.is_staff
    signed_in = Client().post(reverse("console:login"), {"username": "first", "password": password})
    assert signed_in.status_code == 302 and signed_in["Location"] == reverse("console:home")
    # Idempotent; a second organization for the same user; the last owner stays an owner.
    call_command("create_console_user", "--username", "first", "--org", "New Co")
    call_command("create_console_user", "--username", "first", "--org", "Other Co", "--role", "reader")
    assert sorted(Membership.objects.filter(user=membership.user).values_list("organization__name", "role")) == \
        [("New Co", "owner"), ("Other Co", "reader")]
    with pytest.raises(CommandError, match="at least one owner"):
        call_command("create_console_user", "--username", "first", "--org", "New Co", "--role", "admin")
    with pytest.raises(CommandError, match="too short"):
        call_command("create_console_user", "--username", "second", "--org", "New Co", "--password", "abc")


def test_first_run_sign_in_page_explains_how_to_get_a_user(db):
    page = Client().get(reverse("console:login"))
    assert b"create_console_user" in page.content
    assert Client().get("/")["Location"] == reverse("console:home")


def test_api_docs_page_loads_its_assets_locally(db):
    page = Client().get(reverse("api-docs")).content.decode()
    assert "cdn" not in page.lower() and "/static/drf_spectacular_sidecar/redoc/" in page
