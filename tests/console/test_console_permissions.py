"""The console's permissions: tenant scoping (404 for other tenants' objects), role rules
(403), CSRF, sign-in throttling, and that every organization page uses the scoping base view."""
from __future__ import annotations

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from accounts.models import APIKey, Invitation, Membership, Project
from accounts.services import hash_key, membership_add
from console.base import OrganizationView
from tests.batches.conftest import batch_files  # noqa: F401 - batch files in a temporary folder
from tests.console.conftest import PASSWORD, Role, signed_in


def _organization_patterns(resolver=None, prefix=""):
    """Every (route, view class) of the URL conf under /console/orgs/<org>/."""
    for entry in (resolver or get_resolver()).url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from _organization_patterns(entry, route)
        elif isinstance(entry, URLPattern) and route.startswith("console/orgs/"):
            yield route, getattr(entry.callback, "view_class", None)


def test_every_organization_page_is_served_by_the_scoping_base_view():
    patterns = list(_organization_patterns())
    assert len(patterns) >= 11, patterns
    for route, view_class in patterns:
        assert view_class is not None and issubclass(view_class, OrganizationView), route


def object_urls(org, project, key, username):
    """Every console object URL, for the given (possibly foreign) ids."""
    o = org.public_id
    return [
        reverse("console:projects", kwargs={"org": o}),
        reverse("console:keys", kwargs={"org": o, "project": project.public_id}),
        reverse("console:key-revoke", kwargs={"org": o, "project": project.public_id, "key": key.public_id}),
        reverse("console:members", kwargs={"org": o}),
        reverse("console:member-update", kwargs={"org": o, "username": username}),
        reverse("console:member-remove", kwargs={"org": o, "username": username}),
        reverse("console:usage", kwargs={"org": o}),
        reverse("console:admin-keys", kwargs={"org": o}),
        reverse("console:billing", kwargs={"org": o}),
    ]


def test_another_tenants_objects_are_404_for_every_url_and_method(tenants):
    t = tenants
    client = signed_in(t["a_owner"])
    foreign = [
        *object_urls(t["b_org"], t["b_project"], t["b_key"], "bob"),  # B's organization
        reverse("console:keys", kwargs={"org": t["a_org"].public_id, "project": t["b_project"].public_id}),
        reverse("console:key-revoke", kwargs={"org": t["a_org"].public_id, "project": t["b_project"].public_id,
                                              "key": t["b_key"].public_id}),
        reverse("console:key-revoke", kwargs={"org": t["a_org"].public_id, "project": t["a_project"].public_id,
                                              "key": t["b_key"].public_id}),  # B's key under A's project
        reverse("console:member-update", kwargs={"org": t["a_org"].public_id, "username": "bob"}),
        reverse("console:member-remove", kwargs={"org": t["a_org"].public_id, "username": "bob"}),
    ]
    post_data = {"name": "pwned", "email": "mallory@example.com", "role": "owner", "bob-role": "reader"}
    for url in foreign:
        if "member-update" not in url and not url.endswith("/members/bob/"):
            assert client.get(url).status_code == 404, url
        assert client.post(url, post_data).status_code == 404, url
    assert client.get(reverse("console:home"), {"org": t["b_org"].public_id}).status_code == 404

    # Nothing of B's changed.
    t["b_key"].refresh_from_db()
    assert t["b_key"].revoked_at is None
    assert list(Project.objects.filter(organization=t["b_org"]).values_list("name", flat=True)) == ["Main"]
    assert APIKey.objects.filter(project=t["b_project"]).count() == 1
    assert Membership.objects.get(user=t["b_owner"]).role == Role.OWNER
    assert not Membership.objects.filter(user=t["a_owner"], organization=t["b_org"]).exists()
    assert not Invitation.objects.exists()
    # A's own pages answer.
    for url in object_urls(t["a_org"], t["a_project"], t["a_key"], "rita"):
        if not url.endswith("/members/rita/"):
            assert client.get(url).status_code == 200, url


def test_anonymous_users_are_sent_to_sign_in(tenants):
    t = tenants
    for url in object_urls(t["a_org"], t["a_project"], t["a_key"], "rita"):
        response = Client().get(url)
        assert response.status_code == 302 and response["Location"].startswith("/console/login/?next="), url


def test_reader_cannot_create_or_revoke_keys_or_manage_anything(tenants):
    t = tenants
    client = signed_in(t["reader"])
    org, project, key = t["a_org"].public_id, t["a_project"].public_id, t["a_key"].public_id
    keys_url = reverse("console:keys", kwargs={"org": org, "project": project})
    revoke_url = reverse("console:key-revoke", kwargs={"org": org, "project": project, "key": key})

    page = client.get(keys_url)
    assert page.status_code == 200 and b"main" in page.content
    assert b"Create key" not in page.content and b"Revoke" not in page.content
    assert client.post(keys_url, {"name": "mine"}).status_code == 403
    assert client.get(revoke_url).status_code == 403
    assert client.post(revoke_url).status_code == 403
    assert client.post(reverse("console:projects", kwargs={"org": org}), {"name": "New"}).status_code == 403
    assert client.post(reverse("console:members", kwargs={"org": org}),
                       {"email": "bob@example.com", "role": "reader"}).status_code == 403
    assert client.post(reverse("console:member-update", kwargs={"org": org, "username": "mike"}),
                       {"mike-role": "admin"}).status_code == 403
    assert client.post(reverse("console:member-remove", kwargs={"org": org, "username": "mike"})).status_code == 403
    assert client.get(reverse("console:usage", kwargs={"org": org})).status_code == 200

    t["a_key"].refresh_from_db()
    assert t["a_key"].revoked_at is None
    assert APIKey.objects.filter(project=t["a_project"]).count() == 1
    assert not Project.objects.filter(name="New").exists()
    assert Membership.objects.get(user=t["member"]).role == Role.MEMBER
    assert not Membership.objects.filter(user=t["b_owner"], organization=t["a_org"]).exists()
    assert not Invitation.objects.exists()


def test_member_creates_keys_and_revokes_only_their_own(tenants):
    t = tenants
    client = signed_in(t["member"])
    org, project = t["a_org"].public_id, t["a_project"].public_id
    created = client.post(reverse("console:keys", kwargs={"org": org, "project": project}), {"name": "mine"})
    assert created.status_code == 201
    mine = APIKey.objects.get(name="mine")
    assert mine.created_by == t["member"]
    revoke = lambda key: client.post(reverse("console:key-revoke", kwargs={  # noqa: E731
        "org": org, "project": project, "key": key.public_id}))
    assert revoke(t["a_key"]).status_code == 403  # the owner's key
    assert revoke(mine).status_code == 302
    mine.refresh_from_db()
    t["a_key"].refresh_from_db()
    assert mine.revoked_at is not None and t["a_key"].revoked_at is None


def test_key_plaintext_is_shown_once_and_only_its_hash_is_stored(tenants):
    t = tenants
    client = signed_in(t["a_owner"])
    url = reverse("console:keys", kwargs={"org": t["a_org"].public_id, "project": t["a_project"].public_id})
    response = client.post(url, {"name": "ci", "expires_on": "2999-01-31"})
    assert response.status_code == 201
    assert "no-store" in response["Cache-Control"]
    plaintext = response.context["created"].plaintext
    assert response.content.decode().count(plaintext) == 1
    key = APIKey.objects.get(name="ci")
    assert key.secret_hash == hash_key(plaintext) and key.expires_at.isoformat() == "2999-01-31T00:00:00+00:00"
    listing = client.get(url).content.decode()
    assert plaintext not in listing and key.secret_hash not in listing and key.masked in listing


@pytest.mark.parametrize("data, error", [
    ({"name": ""}, "This field is required."),
    ({"name": "x", "expires_on": "2000-01-01"}, "Pick a day after today."),
    ({"name": "x", "expires_on": "not-a-date"}, "Enter a valid date."),
    ({"name": "x" * 201}, "at most 200 characters"),
])
def test_bad_key_input_is_refused_with_a_message_and_creates_nothing(tenants, data, error):
    t = tenants
    client = signed_in(t["a_owner"])
    url = reverse("console:keys", kwargs={"org": t["a_org"].public_id, "project": t["a_project"].public_id})
    response = client.post(url, data)
    assert response.status_code == 400
    assert error in response.content.decode()
    assert APIKey.objects.filter(project=t["a_project"]).count() == 1


def test_project_names_are_unique_per_organization_ignoring_case(tenants):
    client = signed_in(tenants["a_owner"])
    url = reverse("console:projects", kwargs={"org": tenants["a_org"].public_id})
    response = client.post(url, {"name": "MAIN"})
    assert response.status_code == 400 and "already exists" in response.content.decode()
    created = client.post(url, {"name": "Search"})
    assert created.status_code == 302
    project = Project.objects.get(organization=tenants["a_org"], name="Search")
    assert created["Location"].endswith(f"/projects/{project.public_id}/keys/")


def invite(client, org: str, email: str, role: str):
    """POST the members page's invitation form; the response and, on 201, the accept link's path."""
    response = client.post(reverse("console:members", kwargs={"org": org}), {"email": email, "role": role})
    link = response.context.get("accept_url") if response.status_code == 201 else None
    return response, link and link.removeprefix("http://testserver")


def test_member_management_rules(tenants, django_user_model):
    t = tenants
    org = t["a_org"].public_id
    owner = signed_in(t["a_owner"])
    # Owner invites an admin, who joins by accepting; an admin cannot touch the owner nor grant ownership.
    adam = django_user_model.objects.create_user(username="adam", email="adam@example.com", password=PASSWORD)
    response, link = invite(owner, org, "ADAM@example.com", "admin")
    assert response.status_code == 201
    assert not Membership.objects.filter(user=adam, organization=t["a_org"]).exists()  # not without consent
    admin = signed_in(adam)
    assert admin.post(link).status_code == 302
    assert Membership.objects.get(user=adam, organization=t["a_org"]).role == Role.ADMIN
    update = lambda client, name, role: client.post(  # noqa: E731
        reverse("console:member-update", kwargs={"org": org, "username": name}), {f"{name}-role": role})
    assert update(admin, "alice", "reader").status_code == 403
    assert admin.post(reverse("console:member-remove", kwargs={"org": org, "username": "alice"})).status_code == 403
    update(admin, "mike", "owner")  # not a role an admin may grant: refused, nothing changes
    assert Membership.objects.get(user=t["member"]).role == Role.MEMBER
    update(admin, "mike", "reader")
    assert Membership.objects.get(user=t["member"]).role == Role.READER
    # An admin cannot invite an owner either (not a role offered); members and readers cannot invite.
    assert invite(admin, org, "boss@example.com", "owner")[0].status_code == 400
    assert invite(signed_in(t["reader"]), org, "x@example.com", "reader")[0].status_code == 403
    assert not Invitation.objects.filter(email__in=["boss@example.com", "x@example.com"]).exists()
    # The last owner can neither be demoted nor removed.
    response = update(owner, "alice", "admin")
    assert response.status_code == 302
    assert Membership.objects.get(user=t["a_owner"], organization=t["a_org"]).role == Role.OWNER
    owner.post(reverse("console:member-remove", kwargs={"org": org, "username": "alice"}))
    assert Membership.objects.filter(user=t["a_owner"], organization=t["a_org"]).exists()
    messages = [str(m) for m in owner.get(reverse("console:members", kwargs={"org": org})).context["messages"]]
    assert "An organization must keep at least one owner." in messages
    # Inviting a member's address again, or no address, is an error on the form.
    again, _ = invite(owner, org, "adam@example.com", "reader")
    assert again.status_code == 400 and "already a member" in again.content.decode()
    nobody, _ = invite(owner, org, "ghost", "reader")
    assert nobody.status_code == 400 and "Enter a valid email address." in nobody.content.decode()


def test_every_console_form_needs_its_csrf_token(tenants):
    t = tenants
    client = Client(enforce_csrf_checks=True)
    client.force_login(t["a_owner"], backend="django.contrib.auth.backends.ModelBackend")
    url = reverse("console:projects", kwargs={"org": t["a_org"].public_id})
    assert client.post(url, {"name": "No token"}).status_code == 403
    token = client.get(url).context["csrf_token"]
    assert client.post(url, {"name": "With token", "csrfmiddlewaretoken": token}).status_code == 302
    assert Project.objects.filter(name="With token").exists() and not Project.objects.filter(name="No token").exists()
    assert Client(enforce_csrf_checks=True).post(reverse("console:login"),
                                                 {"username": "alice", "password": PASSWORD}).status_code == 403


def test_sign_in_is_throttled_per_username_and_address(tenants, settings):
    login = reverse("console:login")
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert client.post(login, {"username": "alice", "password": "wrong"}).status_code == 200
    locked = client.post(login, {"username": "alice", "password": "wrong"})
    assert locked.status_code == 429 and b"Too many failed sign-in attempts" in locked.content
    # Even the right password is refused while locked out ...
    assert client.post(login, {"username": "alice", "password": PASSWORD}).status_code == 429
    # ... but another username from the same address signs in.
    other = client.post(login, {"username": "rita", "password": PASSWORD})
    assert other.status_code == 302 and other["Location"] == reverse("console:home")


def test_switcher_and_home_land_on_an_organization_of_the_user(tenants):
    t = tenants
    membership_add(organization=t["b_org"], user=t["a_owner"], role=Role.READER)
    client = signed_in(t["a_owner"])
    response = client.get(reverse("console:home"), {"org": t["b_org"].public_id})
    assert response["Location"] == reverse("console:projects", kwargs={"org": t["b_org"].public_id})
    client.get(response["Location"])
    assert client.get(reverse("console:home"))["Location"] == response["Location"]  # remembered
    lonely = signed_in(type(t["a_owner"]).objects.create_user(username="nobody", password=PASSWORD))
    page = lonely.get(reverse("console:home"))
    assert page.status_code == 200 and b"not a member of any organization" in page.content


def test_another_projects_batch_and_file_are_404_on_the_batch_pages(tenants, batch_files, default_model):
    """A batch or file the project does not own (another tenant's, or none) was a 500 (the API's
    NotFoundError), and GET on cancel was a 500 (a view with no template); nothing of B's changes."""
    import io

    from accounts.selectors import ResolvedKey
    from batches import files, services
    from batches.models import Batch
    from tests.batches.conftest import jsonl, request_line

    t = tenants
    upload = io.BytesIO(jsonl([request_line("a")]))
    upload.size, upload.name = len(upload.getvalue()), "input.jsonl"
    b_key = ResolvedKey.from_model(t["b_key"])
    b_file = files.file_create(key=b_key, upload=upload, purpose="batch")
    b_batch = services.batch_create(key=b_key, input_file_id=b_file.public_id, endpoint="/v1/embeddings",
                                    completion_window="24h")
    client = signed_in(t["a_owner"])
    a = {"org": t["a_org"].public_id, "project": t["a_project"].public_id}
    for batch in (b_batch.public_id, "batch_nope"):
        assert client.post(reverse("console:batch-cancel", kwargs={**a, "batch": batch})).status_code == 404
    for file in (b_file.public_id, "file-nope"):
        assert client.get(reverse("console:batch-file", kwargs={**a, "file": file})).status_code == 404
    assert client.get(reverse("console:batch-cancel", kwargs={**a, "batch": b_batch.public_id})).status_code == 405
    assert Batch.objects.get(pk=b_batch.pk).status == b_batch.status
