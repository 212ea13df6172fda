"""Invitations: the only way into an organization from the console (HackSoft style, keyword-only).

An owner or admin invites an e-mail address with a role; the address receives a link (and the
inviter sees it once, to pass on). Whoever opens the link signs in or creates an account and
accepts; the membership is created then, with the invitee's consent. Nothing here tells the
inviter whether the address belongs to an account of the platform: inviting answers the same.

Tokens are 256-bit random strings; the database keeps their SHA-256 only (as for API keys,
`accounts.services.hash_key`), so a leaked table accepts nothing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.http import Http404
from django.utils import timezone

from .models import Invitation, Membership, Organization, random_token
from .services import KEY_SECRET_LENGTH, hash_key

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "inv-"


@dataclass(frozen=True)
class CreatedInvitation:
    """A new invitation and its token (in the accept link), which is never retrievable again."""

    invitation: Invitation
    token: str


def invitation_create(*, organization: Organization, email: str, role: str, invited_by) -> CreatedInvitation:
    """Invite ``email`` to ``organization`` with ``role`` (a `Membership.Role` value), valid for
    ``INVITATION_MAX_AGE_DAYS`` days. A pending invitation of the same address (case-insensitive)
    is revoked: only the newest link works.

    Raises ``ValidationError`` for an unknown role, or (code ``already_member``) when a member of
    ``organization`` already has this address: the inviter sees every member's address on the
    members page, so this tells nothing about the platform's other accounts.
    """
    if role not in Membership.Role.values:
        raise ValidationError(f"Unknown role '{role}'.", code="invalid_role")
    email = email.strip()
    if organization.memberships.filter(user__email__iexact=email).exists():
        raise ValidationError(f"{email} is already a member.", code="already_member")
    token = TOKEN_PREFIX + random_token(KEY_SECRET_LENGTH)
    now = timezone.now()
    with transaction.atomic():
        organization.invitations.filter(email__iexact=email, accepted_at=None, revoked_at=None).update(revoked_at=now)
        invitation = Invitation.objects.create(
            organization=organization, email=email, role=role, token_hash=hash_key(token), invited_by=invited_by,
            created_at=now, expires_at=now + timedelta(days=settings.INVITATION_MAX_AGE_DAYS))
    return CreatedInvitation(invitation=invitation, token=token)


def invitation_send(*, invitation: Invitation, accept_url: str) -> bool:
    """E-mail ``accept_url`` to the invitee through Django's e-mail backend (``EMAIL_URL``).

    Returns False, logged, when the backend fails (the inviter still has the link to pass on).
    """
    inviter = invitation.invited_by.get_username() if invitation.invited_by else "An administrator"
    subject = f"Join {invitation.organization.name} on the embeddings platform"
    body = (f"{inviter} invited you to join {invitation.organization.name} as {invitation.get_role_display()}.\n\n"
            f"Accept the invitation (sign in, or create an account with this address):\n{accept_url}\n\n"
            f"The link works once and expires on {invitation.expires_at:%Y-%m-%d %H:%M} UTC. "
            "If you did not expect it, ignore this e-mail.\n")
    try:
        send_mail(subject, body, None, [invitation.email])
    except Exception:  # noqa: BLE001 - any backend error: the invitation stands, the link is shown
        logger.exception("sending invitation %s failed", invitation.public_id)
        return False
    return True


def invitations_pending(*, organization: Organization) -> QuerySet[Invitation]:
    """``organization``'s invitations that can still be accepted, newest first."""
    return (organization.invitations.select_related("invited_by")
            .filter(accepted_at=None, revoked_at=None, expires_at__gt=timezone.now()).order_by("-created_at"))


def invitation_get(*, organization: Organization, public_id: str) -> Invitation:
    """The invitation ``public_id`` of ``organization``; ``Http404`` otherwise (also for another tenant's)."""
    invitation = organization.invitations.filter(public_id=public_id).first()
    if invitation is None:
        raise Http404("No such invitation.")
    return invitation


def invitation_get_by_token(*, token: str) -> Invitation | None:
    """The invitation whose link carries ``token`` (any state), or None."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 64:
        return None
    return Invitation.objects.select_related("organization", "invited_by").filter(
        token_hash=hash_key(token)).first()


def invitation_revoke(*, invitation: Invitation) -> Invitation:
    """Make ``invitation``'s link unusable (a used or already revoked one is left as it is)."""
    Invitation.objects.filter(pk=invitation.pk, accepted_at=None, revoked_at=None).update(revoked_at=timezone.now())
    invitation.refresh_from_db()
    return invitation


OTHER_ADDRESS = ("This invitation was sent to another e-mail address. Sign in with the account of the invited "
                 "address to accept it, or ask for an invitation to yours.")


def invitation_refusal(invitation: Invitation | None) -> str | None:
    """Why the link of ``invitation`` cannot be used (a sentence), or None when it can."""
    if invitation is None:
        return "This invitation link is not valid."
    if invitation.accepted_at is not None:
        return "This invitation has already been used."
    if invitation.revoked_at is not None:
        return "This invitation was withdrawn."
    if invitation.expires_at <= timezone.now():
        return "This invitation has expired. Ask for a new one."
    return None


def invitation_for_user(invitation: Invitation, user) -> bool:
    """Whether ``user``'s e-mail address is the one ``invitation`` was sent to (case-insensitive,
    as addresses are compared in practice): an invitation is for its address, as OpenAI's are, not
    for whoever holds the link (a forwarded mail, a link in a log)."""
    return bool(user.email) and user.email.strip().casefold() == invitation.email.strip().casefold()


def invitation_accept(*, invitation: Invitation, user) -> Membership:
    """``user`` joins the invitation's organization with its role; the link is used up.

    Raises ``ValidationError``: code ``invitation_other_address`` when ``user``'s address is not
    the invited one (`invitation_for_user`; the link stays usable), ``invitation_unusable``
    (message from `invitation_refusal`) when the link is used, revoked or expired, checked under a
    row lock so that one link makes one membership. A user who is already a member keeps the role
    they have.
    """
    if not invitation_for_user(invitation, user):
        raise ValidationError(OTHER_ADDRESS, code="invitation_other_address")
    with transaction.atomic():
        locked = Invitation.objects.select_for_update().get(pk=invitation.pk)
        refusal = invitation_refusal(locked)
        if refusal:
            raise ValidationError(refusal, code="invitation_unusable")
        membership = Membership.objects.filter(organization_id=locked.organization_id, user=user).first()
        if membership is None:
            try:
                with transaction.atomic():
                    membership = Membership.objects.create(organization_id=locked.organization_id, user=user,
                                                           role=locked.role)
            except IntegrityError:  # joined concurrently by another link
                membership = Membership.objects.get(organization_id=locked.organization_id, user=user)
        locked.accepted_at = timezone.now()
        locked.accepted_by = user
        locked.save(update_fields=["accepted_at", "accepted_by"])
    invitation.accepted_at, invitation.accepted_by = locked.accepted_at, user
    return membership
