"""What each membership role may do in the console: the one table the views consult.

Source: the roles of `accounts.models.Membership` (owner and admin manage projects,
keys and members; member uses and reads; reader only reads), shaped like OpenAI's
organization roles: a member may create keys and revoke the keys they created
(OpenAI's "member" can do the same with their own keys); only an owner grants or
takes away the owner role.
"""
from __future__ import annotations

from .models import APIKey, Membership

Role = Membership.Role
MANAGERS = frozenset({Role.OWNER, Role.ADMIN})


def can_manage_projects(role: str) -> bool:
    """Create projects: owner, admin."""
    return role in MANAGERS


def can_create_keys(role: str) -> bool:
    """Create API keys: owner, admin, member (not reader)."""
    return role in MANAGERS or role == Role.MEMBER


def can_revoke_key(role: str, *, api_key: APIKey, user) -> bool:
    """Revoke ``api_key``: owner and admin any key; a member only keys they created; a reader none."""
    if role in MANAGERS:
        return True
    return role == Role.MEMBER and api_key.created_by_id is not None and api_key.created_by_id == user.pk


def can_manage_members(role: str) -> bool:
    """Add members, change roles, remove members: owner, admin."""
    return role in MANAGERS


def can_manage_admin_keys(role: str) -> bool:
    """See, create and revoke the organization's admin keys: owner, admin. An admin key reads
    all of the organization's usage and costs, so even its list is for managers only
    (OpenAI's admin keys are for organization owners)."""
    return role in MANAGERS


def can_manage_model_access(role: str) -> bool:
    """Set which models a project's keys, or one key, may use: owner, admin (as limits)."""
    return role in MANAGERS


def can_view_audit_log(role: str) -> bool:
    """Read the organization's audit log: owner, admin (OpenAI's audit logs are for owners)."""
    return role in MANAGERS


def can_view_billing(role: str) -> bool:
    """See and download statements: owner, admin (OpenAI and most SaaS consoles restrict
    billing to owners/admins)."""
    return role in MANAGERS


def assignable_roles(role: str) -> list[str]:
    """The roles a member with ``role`` may grant or take away (owner: all; admin: all but owner)."""
    if role == Role.OWNER:
        return list(Role.values)
    if role == Role.ADMIN:
        return [r for r in Role.values if r != Role.OWNER]
    return []
