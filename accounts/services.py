"""Writes for tenancy (HackSoft style: ``<entity>_<action>``, keyword-only)."""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from .models import AdminAPIKey, APIKey, Membership, Organization, Project, ServiceAccount, random_token

# 43 base62 chars = 256 bits of entropy (same strength as OpenAI's keys).
KEY_SECRET_LENGTH = 43


def hash_key(plaintext: str) -> str:
    """SHA-256 hex digest (64 chars) of a plaintext key: what the database stores."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def api_key_cache_key(secret_hash: str) -> str:
    """The cache key under which the resolved key (`accounts.selectors.ResolvedKey`) is kept."""
    return f"apikey:{secret_hash}"


def admin_api_key_cache_key(secret_hash: str) -> str:
    """The cache key under which a resolved admin key (`accounts.selectors.ResolvedAdminKey`) is kept."""
    return f"adminkey:{secret_hash}"


# What `api_key_cache_invalidate` leaves under a key's cache name (then a random token, so each
# invalidation stores other bytes than the last: a process's memory of the entry never matches a
# later one). A reader finding it reads the database and caches nothing (`key_cache_invalidated`);
# the web processes then serve the key from their memory, confirmed against the mark's bytes.
INVALIDATED_PREFIX = "invalidated:"
# Seconds the mark outlives API_KEY_CACHE_SECONDS: a reader's write checked in time but delayed on
# its way to Redis (the cache client's timeouts are 2 s to connect and 2 s to answer, a stalled
# process more) still finds it there.
INVALIDATED_MARGIN_SECONDS = 60


def key_cache_invalidated(entry) -> bool:
    """Whether a key's cache entry is the mark `api_key_cache_invalidate` leaves."""
    return isinstance(entry, str) and entry.startswith(INVALIDATED_PREFIX)


def api_key_cache_invalidate(keys, *, new: bool = False) -> int:
    """Invalidate the cached lookups of ``keys`` (`APIKey` and/or `AdminAPIKey` rows, or one row)
    so the next request reads them from the database; returns how many cache entries were named.

    The one place every change that can make a key invalid goes through: the revoke services,
    and (`accounts.signals`) every save or delete of a key, every save of a project (archiving),
    and the cascades of deleting a project or an organization, whoever makes them (console,
    admin forms and bulk actions, management commands, shell). Each entry is replaced at
    once, and again when the surrounding transaction commits, by a mark (`INVALIDATED_PREFIX`) that
    lives ``API_KEY_CACHE_SECONDS`` + `INVALIDATED_MARGIN_SECONDS`: a reader adds an entry only
    where there is none (``cache.add``) and only within half of ``API_KEY_CACHE_SECONDS`` of
    starting its read (`accounts.selectors._cached_resolve`), so one that read the old row before
    the change committed cannot put it back unless its write reached Redis over a minute late.
    ``QuerySet.update()`` sends no signals: code that changes keys or projects that way must call
    this itself. ``new``: keys just created, whose entries (no reader knew their plaintext before:
    at most a cached absence) are deleted, with no mark, so their first requests cache them.
    """
    if isinstance(keys, (APIKey, AdminAPIKey)):
        keys = [keys]
    names = [admin_api_key_cache_key(key.secret_hash) if isinstance(key, AdminAPIKey)
             else api_key_cache_key(key.secret_hash) for key in keys]

    def mark():
        token = INVALIDATED_PREFIX + secrets.token_hex(8)
        cache.set_many({name: token for name in names},
                       timeout=settings.API_KEY_CACHE_SECONDS + INVALIDATED_MARGIN_SECONDS)

    if names and new:
        cache.delete_many(names)
        transaction.on_commit(lambda: cache.delete_many(names))
    elif names:
        mark()
        transaction.on_commit(mark)
    return len(names)


def project_api_keys_cache_invalidate(project: Project) -> int:
    """`api_key_cache_invalidate` for every key of ``project`` (after archiving or renaming it)."""
    return api_key_cache_invalidate(list(APIKey.objects.filter(project_id=project.pk).only("secret_hash")))


@dataclass(frozen=True)
class CreatedKey:
    """A new key: the stored row and the plaintext, which is never retrievable again."""

    api_key: APIKey
    plaintext: str


def organization_get_or_create(*, name: str) -> Organization:
    """The organization named ``name`` (case-insensitive), created when missing."""
    org = Organization.objects.filter(name__iexact=name).first()
    if org:
        return org
    try:
        with transaction.atomic():
            return Organization.objects.create(name=name)
    except IntegrityError:  # created concurrently
        return Organization.objects.get(name__iexact=name)


def project_get_or_create(*, organization: Organization, name: str) -> Project:
    """The project ``name`` (case-insensitive) of ``organization``, created when missing."""
    project = organization.projects.filter(name__iexact=name).first()
    if project:
        return project
    try:
        with transaction.atomic():
            return Project.objects.create(organization=organization, name=name)
    except IntegrityError:
        return organization.projects.get(name__iexact=name)


def project_create(*, organization: Organization, name: str) -> Project:
    """A new project ``name`` in ``organization`` (the console's "Create project").

    Raises ``ValidationError`` when the organization already has a project of that
    name (case-insensitive; the database constraint ``project_org_name_ci_unique`` decides).
    """
    try:
        with transaction.atomic():
            return Project.objects.create(organization=organization, name=name.strip())
    except IntegrityError:
        raise ValidationError(f"A project named '{name.strip()}' already exists.", code="duplicate") from None


def project_rename(*, project: Project, name: str) -> Project:
    """Rename ``project``. Raises ``ValidationError`` (code ``duplicate``) when the organization has
    another project of that name (case-insensitive)."""
    try:
        with transaction.atomic():
            project.name = name.strip()
            project.save(update_fields=["name"])
    except IntegrityError:
        raise ValidationError(f"A project named '{name.strip()}' already exists.", code="duplicate") from None
    return project


def project_archive(*, project: Project) -> Project:
    """Archive ``project`` now (idempotent): its keys are refused from the next request (401), it
    leaves the Admin API's default project list; usage and keys are kept."""
    if project.archived_at is None:
        project.archived_at = timezone.now()
        project.save(update_fields=["archived_at"])
    return project


def project_allowed_models_set(*, project: Project, models: list[str]) -> Project:
    """Set the models ``project``'s keys may use (canonical names, already checked against the
    registry: `embeddings.services.allowed_models_normalize`); ``[]`` = every model. Applies to the
    next request (the keys' cached lookups are dropped: `accounts.signals.project_changed`)."""
    project.allowed_models = list(models)
    project.save(update_fields=["allowed_models"])
    return project


def api_key_allowed_models_set(*, api_key: APIKey, models: list[str]) -> APIKey:
    """Set the models ``api_key`` may use, within its project's (names as in
    `project_allowed_models_set`); ``[]`` = every model the project allows."""
    api_key.allowed_models = list(models)
    api_key.save(update_fields=["allowed_models"])
    return api_key


def api_key_expiry_set(*, api_key: APIKey, expires_at: datetime | None) -> APIKey:
    """Make ``api_key`` expire at ``expires_at`` (``None``: never); applies to the next request."""
    api_key.expires_at = expires_at
    api_key.save(update_fields=["expires_at"])
    return api_key


def membership_add(*, organization: Organization, user, role: str) -> Membership:
    """Give ``user`` the ``role`` (a `Membership.Role` value) in ``organization``.

    Raises ``ValidationError`` when the user is already a member (constraint
    ``membership_user_org_unique``) or the role is unknown.
    """
    if role not in Membership.Role.values:
        raise ValidationError(f"Unknown role '{role}'.", code="invalid_role")
    try:
        with transaction.atomic():
            return Membership.objects.create(organization=organization, user=user, role=role)
    except IntegrityError:
        raise ValidationError(f"{user.get_username()} is already a member.", code="duplicate") from None


def _check_not_last_owner(membership: Membership) -> None:
    """Raise ``ValidationError`` when ``membership`` is its organization's only owner
    (an organization always keeps an owner, as on GitHub and OpenAI)."""
    if membership.role != Membership.Role.OWNER:
        return
    owners = (Membership.objects.select_for_update()
              .filter(organization_id=membership.organization_id, role=Membership.Role.OWNER))
    if len(owners) <= 1:
        raise ValidationError("An organization must keep at least one owner.", code="last_owner")


def membership_set_role(*, membership: Membership, role: str) -> Membership:
    """Change a member's role. Raises ``ValidationError`` for an unknown role or when
    it would leave the organization without an owner."""
    if role not in Membership.Role.values:
        raise ValidationError(f"Unknown role '{role}'.", code="invalid_role")
    with transaction.atomic():
        if role != Membership.Role.OWNER:
            _check_not_last_owner(membership)
        membership.role = role
        membership.save(update_fields=["role"])
    return membership


def membership_remove(*, membership: Membership) -> None:
    """Remove a member. Raises ``ValidationError`` when it is the last owner."""
    with transaction.atomic():
        _check_not_last_owner(membership)
        membership.delete()


def _key_create(model, **fields):
    """Insert a key of ``model`` (`APIKey` or `AdminAPIKey`): ``model.PREFIX`` + 43 base62 chars
    (256 bits); only the SHA-256 and the display parts are stored. Returns ``(row, plaintext)``."""
    plaintext = model.PREFIX + random_token(KEY_SECRET_LENGTH)
    row = model.objects.create(secret_hash=hash_key(plaintext), prefix=plaintext[: len(model.PREFIX) + 4],
                               last4=plaintext[-4:], **fields)
    return row, plaintext


def api_key_create(*, project: Project, name: str = "", expires_at: datetime | None = None,
                   created_by=None, service_account: ServiceAccount | None = None) -> CreatedKey:
    """Create a key for ``project`` (owned by ``created_by`` or ``service_account``); returns the row
    and the plaintext (``sk-proj-`` + 43 base62).

    The plaintext is not stored anywhere; only its SHA-256 is.
    """
    api_key, plaintext = _key_create(APIKey, project=project, name=name, expires_at=expires_at,
                                     created_by=created_by, service_account=service_account)
    return CreatedKey(api_key=api_key, plaintext=plaintext)


@dataclass(frozen=True)
class CreatedServiceAccount:
    """A new service account and its first key (`CreatedKey`: the plaintext, shown once)."""

    service_account: ServiceAccount
    key: CreatedKey


def service_account_create(*, project: Project, name: str, expires_at: datetime | None = None
                           ) -> CreatedServiceAccount:
    """Create a service account of ``project`` and its key (OpenAI's Admin API: how a key is made
    programmatically; the key's name is the account's)."""
    with transaction.atomic():
        account = ServiceAccount.objects.create(project=project, name=name)
        created = api_key_create(project=project, name=name, expires_at=expires_at, service_account=account)
    return CreatedServiceAccount(service_account=account, key=created)


def service_account_delete(*, service_account: ServiceAccount) -> None:
    """Delete ``service_account``: its keys are revoked first (kept, as usage refers to them)."""
    with transaction.atomic():
        for key in service_account.api_keys.filter(revoked_at__isnull=True):
            api_key_revoke(api_key=key)
        service_account.delete()


@dataclass(frozen=True)
class CreatedAdminKey:
    """A new admin key: the stored row and the plaintext, which is never retrievable again."""

    admin_api_key: AdminAPIKey
    plaintext: str


def admin_api_key_create(*, organization: Organization, name: str = "", expires_at: datetime | None = None,
                         created_by=None) -> CreatedAdminKey:
    """Create an admin key of ``organization`` (``sk-admin-`` + 43 base62 = 256 bits).

    Admin keys read the organization's usage and costs (``/v1/organization/...``) and
    cannot call ``/v1/embeddings``. Only the SHA-256 of the plaintext is stored.
    """
    admin_key, plaintext = _key_create(AdminAPIKey, organization=organization, name=name, expires_at=expires_at,
                                       created_by=created_by)
    return CreatedAdminKey(admin_api_key=admin_key, plaintext=plaintext)


def admin_api_key_revoke(*, admin_api_key: AdminAPIKey) -> AdminAPIKey:
    """Revoke ``admin_api_key`` now (idempotent) and drop it from the auth cache."""
    if admin_api_key.revoked_at is None:
        admin_api_key.revoked_at = timezone.now()
        admin_api_key.save(update_fields=["revoked_at"])
    api_key_cache_invalidate(admin_api_key)
    return admin_api_key


def api_key_revoke(*, api_key: APIKey) -> APIKey:
    """Revoke ``api_key`` now (idempotent) and drop it from the auth cache
    (`api_key_cache_invalidate`): the next request with it is refused (401)."""
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    api_key_cache_invalidate(api_key)
    return api_key


def api_key_revoke_by_public_id(public_id: str) -> APIKey | AdminAPIKey:
    """Revoke the project key or admin key ``public_id`` (``key_...``) now (idempotent).

    Raises ``ValidationError`` (code ``not_found``) when neither kind has that id.
    """
    api_key = APIKey.objects.filter(public_id=public_id).first()
    if api_key is not None:
        return api_key_revoke(api_key=api_key)
    admin_key = AdminAPIKey.objects.filter(public_id=public_id).first()
    if admin_key is not None:
        return admin_api_key_revoke(admin_api_key=admin_key)
    raise ValidationError(f"No API key or admin key has the id '{public_id}'.", code="not_found")
