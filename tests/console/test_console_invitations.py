"""Invitations (issue 11, item 8): owners and admins invite an e-mail address; the invitee joins
only by accepting (signing in or creating an account); the console's answer never tells whether
the address has an account; used, withdrawn, expired or unknown links are refused."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.invitations import invitation_create
from accounts.models import Invitation, Membership
from accounts.services import hash_key
from tests.console.conftest import PASSWORD, Role, signed_in
from tests.console.test_console_permissions import invite

NEW_PASSWORD = "correct-horse-battery-staple-9"


def members_url(organization) -> str:
    return reverse("console:members", kwargs={"org": organization.public_id})


def test_the_answer_is_the_same_whether_the_address_has_an_account_or_not(tenants, django_user_model):
    t = tenants
    django_user_model.objects.create_user(username="known", email="known@example.com", password=PASSWORD)
    owner = signed_in(t["a_owner"])
    answers = {}
    for email in ("known@example.com", "unknown@example.com"):
        response, link = invite(owner, t["a_org"].public_id, email, "member")
        invitation = Invitation.objects.get(email=email)
        html = response.content.decode()
        for varying in (email, f"http://testserver{link}", invitation.public_id):
            html = html.replace(varying, "<varies>")
        html = re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", html)
        html = re.sub(r"<tr data-invitation=.*?</tr>", "", html, flags=re.S)  # the pending list grows
        html = re.sub(r"\s+", " ", html)
        answers[email] = (response.status_code, html)
    assert answers["known@example.com"] == answers["unknown@example.com"]
    assert answers["known@example.com"][0] == 201
    assert not Membership.objects.filter(user__username="known").exists()  # nobody joins without consent
    # Both were mailed their own link, which is shown once to the inviter and stored only hashed.
    assert [m.to for m in mail.outbox] == [["known@example.com"], ["unknown@example.com"]]
    for message in mail.outbox:
        (link,) = re.findall(r"http://testserver(/console/invitations/\S+/)", message.body)
        token = link.rstrip("/").rsplit("/", 1)[1]
        invitation = Invitation.objects.get(email=message.to[0])
        assert invitation.token_hash == hash_key(token) and "Acme" in message.subject
        assert token not in str(list(Invitation.objects.values_list()))
        assert token not in owner.get(members_url(t["a_org"])).content.decode()  # shown once, never again


def test_pending_invitations_are_listed_and_revoked_by_managers_only(tenants):
    t = tenants
    owner = signed_in(t["a_owner"])
    _, link = invite(owner, t["a_org"].public_id, "newbie@example.com", "reader")
    invitation = Invitation.objects.get(email="newbie@example.com")
    page = owner.get(members_url(t["a_org"])).content.decode()
    assert "newbie@example.com" in page and invitation.public_id in page
    assert "newbie@example.com" not in signed_in(t["reader"]).get(members_url(t["a_org"])).content.decode()
    revoke = reverse("console:invitation-revoke", kwargs={"org": t["a_org"].public_id,
                                                          "invitation": invitation.public_id})
    assert signed_in(t["reader"]).post(revoke).status_code == 403
    assert signed_in(t["member"]).post(revoke).status_code == 403
    assert invite(signed_in(t["member"]), t["a_org"].public_id, "friend@example.com", "reader")[0].status_code == 403
    assert not Invitation.objects.filter(email="friend@example.com").exists()
    # Another organization's owner: 404 under A (not a member) and under B (not B's invitation).
    bob = signed_in(t["b_owner"])
    assert bob.post(revoke).status_code == 404
    assert bob.post(reverse("console:invitation-revoke", kwargs={
        "org": t["b_org"].public_id, "invitation": invitation.public_id})).status_code == 404
    invitation.refresh_from_db()
    assert invitation.revoked_at is None and invitation.is_pending()

    assert owner.post(revoke).status_code == 302
    invitation.refresh_from_db()
    assert invitation.revoked_at is not None
    page = owner.get(members_url(t["a_org"])).content.decode()
    assert invitation.public_id not in page and 'id="no-invitations"' in page
    refused = Client().get(link)
    assert refused.status_code == 410 and "withdrawn" in refused.content.decode()
    assert Client().post(link, {"action": "signup", "username": "newbie", "password1": NEW_PASSWORD,
                                "password2": NEW_PASSWORD}).status_code == 410
    assert not type(t["a_owner"]).objects.filter(username="newbie").exists()


def test_a_new_invitee_creates_an_account_with_the_invited_address_and_joins(tenants, django_user_model):
    t = tenants
    _, link = invite(signed_in(t["a_owner"]), t["a_org"].public_id, "Newbie@Example.com", "member")
    visitor = Client()
    page = visitor.get(link)
    assert page.status_code == 200 and "Join Acme" in page.content.decode()
    assert "Newbie@" in page.content.decode() and 'id="signup"' in page.content.decode()
    weak = visitor.post(link, {"action": "signup", "username": "newbie", "password1": "123", "password2": "123"})
    assert weak.status_code == 400 and not django_user_model.objects.filter(username="newbie").exists()
    joined = visitor.post(link, {"action": "signup", "username": "newbie", "password1": NEW_PASSWORD,
                                 "password2": NEW_PASSWORD})
    assert joined.status_code == 302 and joined["Location"] == reverse("console:projects",
                                                                      kwargs={"org": t["a_org"].public_id})
    user = django_user_model.objects.get(username="newbie")
    invitation = Invitation.objects.get(email__iexact="newbie@example.com")
    assert user.email.lower() == invitation.email.lower() == "newbie@example.com"  # Django normalises the domain
    assert user.check_password(NEW_PASSWORD)
    assert Membership.objects.get(user=user).organization == t["a_org"]
    assert Membership.objects.get(user=user).role == Role.MEMBER
    assert visitor.get(joined["Location"]).status_code == 200  # signed in
    invitation.refresh_from_db()
    assert invitation.accepted_by == user and invitation.accepted_at is not None
    # Used: refused, for the same visitor and anyone else.
    for client in (visitor, Client()):
        again = client.get(link)
        assert again.status_code == 410 and "already been used" in again.content.decode()
    assert signed_in(t["b_owner"]).post(link).status_code == 410
    assert not Membership.objects.filter(user=t["b_owner"], organization=t["a_org"]).exists()


def test_an_existing_user_signs_in_then_accepts(tenants, django_user_model):
    t = tenants
    django_user_model.objects.create_user(username="known", email="known@example.com", password=PASSWORD)
    _, link = invite(signed_in(t["a_owner"]), t["a_org"].public_id, "known@example.com", "reader")
    visitor = Client()
    # An account for an address that has one is refused with the answer a taken username gets,
    # so whoever holds the link (the inviter too) learns nothing about which accounts exist.
    taken = visitor.post(link, {"action": "signup", "username": "known2", "password1": NEW_PASSWORD,
                                "password2": NEW_PASSWORD})
    assert taken.status_code == 400 and "sign in to accept" in taken.content.decode()
    assert not django_user_model.objects.filter(username="known2").exists()
    _, other_link = invite(signed_in(t["a_owner"]), t["a_org"].public_id, "nobody@example.com", "reader")
    taken_name = Client().post(other_link, {"action": "signup", "username": "KNOWN", "password1": NEW_PASSWORD,
                                            "password2": NEW_PASSWORD})
    assert taken_name.status_code == 400
    errors = [re.findall(r'<ul class="errorlist[^"]*"[^>]*>(.*?)</ul>', page.content.decode(), re.S)
              for page in (taken, taken_name)]
    assert errors[0] == errors[1] and errors[0], errors
    # Accepting signed out leads to the sign-in, which comes back to the invitation.
    to_login = visitor.post(link)
    assert to_login.status_code == 302 and to_login["Location"].startswith(reverse("console:login"))
    signed = visitor.post(to_login["Location"], {"username": "known", "password": PASSWORD})
    assert signed.status_code == 302 and signed["Location"] == link
    assert not Membership.objects.filter(user__username="known").exists()  # GET/sign-in alone accepts nothing
    assert visitor.get(link).status_code == 200
    assert visitor.post(link).status_code == 302
    membership = Membership.objects.get(user__username="known")
    assert membership.organization == t["a_org"] and membership.role == Role.READER
    assert not Membership.objects.filter(user__username="known", organization=t["b_org"]).exists()


def test_an_invitation_is_for_its_address_not_for_whoever_holds_the_link(tenants, django_user_model):
    """A signed-in user of another address (a forwarded mail, a link in a log) cannot accept: 403,
    nothing joined, and the link still works for the invited address (compared case-insensitively)."""
    t = tenants
    django_user_model.objects.create_user(username="mallory", email="mallory@example.com", password=PASSWORD)
    invited = django_user_model.objects.create_user(username="vera", email="Vera@Example.com", password=PASSWORD)
    _, link = invite(signed_in(t["a_owner"]), t["a_org"].public_id, "vera@example.com", "admin")
    other = Client()
    other.force_login(django_user_model.objects.get(username="mallory"),
                      backend="django.contrib.auth.backends.ModelBackend")
    page = other.get(link)
    assert page.status_code == 200 and 'id="accept"' not in page.content.decode()
    assert "sent to another e-mail address" in page.content.decode()
    refused = other.post(link)
    assert refused.status_code == 403 and "sent to another e-mail address" in refused.content.decode()
    assert not Membership.objects.filter(user__username="mallory").exists()
    assert signed_in(invited).post(link).status_code == 302
    assert Membership.objects.get(user=invited, organization=t["a_org"]).role == Role.ADMIN


def test_expired_unknown_and_replaced_links_are_refused(tenants):
    t = tenants
    owner = signed_in(t["a_owner"])
    _, first = invite(owner, t["a_org"].public_id, "late@example.com", "member")
    _, second = invite(owner, t["a_org"].public_id, "late@example.com", "member")  # replaces the first
    assert Client().get(first).status_code == 410
    assert Client().get(second).status_code == 200
    Invitation.objects.filter(email="late@example.com").update(expires_at=timezone.now() - timedelta(seconds=1))
    expired = signed_in(t["b_owner"]).post(second)
    assert expired.status_code == 410 and "expired" in expired.content.decode()
    unknown = Client().get(reverse("console:invitation-accept", kwargs={"token": "inv-" + "x" * 43}))
    assert unknown.status_code == 404 and "not valid" in unknown.content.decode()
    assert Client().get(reverse("console:invitation-accept", kwargs={"token": "garbage"})).status_code == 404
    assert not Membership.objects.filter(user=t["b_owner"], organization=t["a_org"]).exists()


def test_an_admin_invites_only_roles_they_may_grant_and_a_failed_mail_still_shows_the_link(tenants, settings):
    t = tenants
    created = invitation_create(organization=t["a_org"], email="boss@example.com", role="owner",
                                invited_by=t["a_owner"])
    Membership.objects.filter(user=t["member"]).update(role=Role.ADMIN)
    admin = signed_in(t["member"])
    revoke = reverse("console:invitation-revoke", kwargs={"org": t["a_org"].public_id,
                                                          "invitation": created.invitation.public_id})
    assert admin.post(revoke).status_code == 403  # an owner invitation is beyond an admin
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 2  # nothing listens
    response, link = invite(admin, t["a_org"].public_id, "helper@example.com", "admin")
    assert response.status_code == 201 and "could not be sent" in response.content.decode()
    assert link and Client().get(link).status_code == 200


@pytest.mark.parametrize("email_url, backend, host_port", [
    (None, "django.core.mail.backends.console.EmailBackend", None),
    ("smtp+tls://user:secret@smtp.example.com:587", "django.core.mail.backends.smtp.EmailBackend",
     ["smtp.example.com", "587"]),
    ("smtp://mail.internal", "django.core.mail.backends.smtp.EmailBackend", ["mail.internal", "25"]),  # SMTP's port
])
def test_the_email_backend_comes_from_email_url(tmp_path, email_url, backend, host_port):
    env = {k: v for k, v in os.environ.items() if k != "EMAIL_URL"}
    if email_url:
        env["EMAIL_URL"] = email_url
    env.update(VAR_DIR=str(tmp_path), DEBUG="true", DJANGO_SETTINGS_MODULE="config.settings")
    code = "from django.conf import settings as s; print(s.EMAIL_BACKEND, s.EMAIL_HOST, s.EMAIL_PORT)"
    result = subprocess.run([sys.executable, "-c", f"import django; django.setup(); {code}"],
                            cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60,
                            env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == backend
    if host_port:
        assert result.stdout.split()[1:] == host_port
