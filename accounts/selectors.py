"""Reads for tenancy."""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.cache import cache

from django.db.models import Count, Q, QuerySet
from django.http import Http404
from django.utils import timezone

from .models import AdminAPIKey, APIKey, AuditLog, Membership, Organization, Project
from .services import admin_api_key_cache_key, api_key_cache_key, hash_key, key_cache_invalidated

_MISSING = "missing"
# `_cached_resolve`'s ``cached`` when the caller has not read the cache entry.
UNREAD = object()


@dataclass(frozen=True)
class ResolvedKey:
    """What a request needs to know about its API key, cheap to cache.

    Ids are the integer primary keys (``*_id``) and the public ids (``*_public_id``).
    """

    key_id: int
    key_public_id: str
    project_id: int
    project_public_id: str
    organization_id: int
    organization_public_id: str
    expires_at: datetime | None
    revoked_at: datetime | None
    project_archived_at: datetime | None
    # Model allowlists (canonical names; empty = every model) of the project and of the key.
    project_allowed_models: tuple[str, ...] = ()
    allowed_models: tuple[str, ...] = ()

    @property
    def is_authenticated(self) -> bool:  # lets DRF's IsAuthenticated accept it as `request.user`
        return True

    def model_refused_by(self, names) -> str | None:
        """Which allowlist refuses a model known by ``names`` (its name and aliases): ``"project"``,
        ``"key"``, or ``None`` when this key may use it (both lists empty or naming it)."""
        for scope, allowed in (("project", self.project_allowed_models), ("key", self.allowed_models)):
            if allowed and not any(name in allowed for name in names):
                return scope
        return None

    @classmethod
    def from_model(cls, key: APIKey) -> "ResolvedKey":
        project = key.project
        return cls(
            key_id=key.pk,
            key_public_id=key.public_id,
            project_id=project.pk,
            project_public_id=project.public_id,
            organization_id=project.organization_id,
            organization_public_id=project.organization.public_id,
            expires_at=key.expires_at,
            revoked_at=key.revoked_at,
            project_archived_at=project.archived_at,
            project_allowed_models=tuple(project.allowed_models),
            allowed_models=tuple(key.allowed_models),
        )


def _cached_resolve(cache_key: str, lookup, resolve, cached=UNREAD):
    """``resolve(lookup())`` cached under ``cache_key`` for ``API_KEY_CACHE_SECONDS``, its absence
    (``None``) too, so unknown keys do not reach the database on every try. ``cached``: the entry
    under ``cache_key`` when the caller read it already (None: not there); `UNREAD` reads it.

    The entry is added only where there is none (``cache.add``: an invalidation's mark, which lives a
    minute longer than ``API_KEY_CACHE_SECONDS``, stays: `accounts.services.api_key_cache_invalidate`)
    and only when the read took less than half of ``API_KEY_CACHE_SECONDS``: a row read before a
    change committed is not cached after the change marked the entry (unless the write reached
    Redis over a minute late). An absence is cached likewise.
    """
    if cached is UNREAD:
        cached = cache.get(cache_key)
    if cached == _MISSING:
        return None
    if cached is not None and not key_cache_invalidated(cached):
        return cached
    started = time.monotonic()
    row = lookup()
    resolved = resolve(row) if row else None
    if cached is None and time.monotonic() - started < settings.API_KEY_CACHE_SECONDS / 2:
        cache.add(cache_key, resolved or _MISSING, timeout=settings.API_KEY_CACHE_SECONDS)
    return resolved


def api_key_resolve(*, plaintext: str, cached=UNREAD) -> ResolvedKey | None:
    """Look a plaintext key up by its SHA-256; ``None`` when no such key exists.

    The result (or its absence) is cached for ``API_KEY_CACHE_SECONDS`` (not while a change's mark
    is there: `_cached_resolve`); revoked and
    expired keys are returned as they are, the caller decides. ``cached``: the cache entry under
    `api_key_cache_key` when the caller read it already (see `_cached_resolve`).
    """
    secret_hash = hash_key(plaintext)
    return _cached_resolve(
        api_key_cache_key(secret_hash),
        lambda: APIKey.objects.select_related("project__organization").filter(secret_hash=secret_hash).first(),
        ResolvedKey.from_model, cached)


# --- The console's reads (every one scoped by organization) ---------------------------------


def organization_find(*, name_or_id: str) -> Organization | None:
    """The organization whose public id (``org_...``) or name (case-insensitive) is ``name_or_id``
    (what the management commands take), or ``None``."""
    return (Organization.objects.filter(public_id=name_or_id).first()
            or Organization.objects.filter(name__iexact=name_or_id).first())


def project_find(*, organization: Organization, name_or_id: str) -> Project | None:
    """``organization``'s project whose public id or name (case-insensitive) is ``name_or_id``, or ``None``."""
    return (organization.projects.filter(public_id=name_or_id).first()
            or organization.projects.filter(name__iexact=name_or_id).first())


def membership_get_for_user(*, user, organization_public_id: str) -> Membership:
    """``user``'s membership of the organization ``organization_public_id``.

    Raises ``Http404`` when the organization does not exist *or* the user is not a
    member: another tenant's organization is indistinguishable from a missing one.
    """
    membership = (Membership.objects.select_related("organization")
                  .filter(user=user, organization__public_id=organization_public_id).first())
    if membership is None:
        raise Http404("No such organization.")
    return membership


def organizations_for_user(*, user) -> QuerySet[Organization]:
    """The organizations ``user`` is a member of, by name."""
    return Organization.objects.filter(memberships__user=user).order_by("name")


def projects_for_organization(*, organization: Organization) -> QuerySet[Project]:
    """``organization``'s projects by name, each annotated with ``active_key_count``
    (neither revoked nor expired now)."""
    now = timezone.now()
    active = Q(api_keys__revoked_at__isnull=True) & (Q(api_keys__expires_at__isnull=True)
                                                    | Q(api_keys__expires_at__gt=now))
    return (organization.projects.annotate(active_key_count=Count("api_keys", filter=active))
            .order_by("name"))


def project_get(*, organization: Organization, public_id: str) -> Project:
    """The project ``public_id`` of ``organization``; ``Http404`` otherwise (also for another tenant's)."""
    project = organization.projects.filter(public_id=public_id).first()
    if project is None:
        raise Http404("No such project.")
    return project


def api_keys_for_project(*, project: Project) -> QuerySet[APIKey]:
    """``project``'s keys, newest first, revoked ones included (the hash is deferred: never displayed)."""
    return project.api_keys.select_related("created_by").defer("secret_hash").order_by("-created_at")


def api_key_get(*, project: Project, public_id: str) -> APIKey:
    """The key ``public_id`` of ``project``; ``Http404`` otherwise (also for another project's or tenant's)."""
    key = project.api_keys.filter(public_id=public_id).first()
    if key is None:
        raise Http404("No such API key.")
    return key


def memberships_for_organization(*, organization: Organization) -> QuerySet[Membership]:
    """``organization``'s memberships with their users, by username."""
    return organization.memberships.select_related("user").order_by("user__username")


def membership_get(*, organization: Organization, username: str) -> Membership:
    """The membership of the user ``username`` in ``organization``; ``Http404`` otherwise."""
    membership = (organization.memberships.select_related("user")
                  .filter(user__username=username).first())
    if membership is None:
        raise Http404("No such member.")
    return membership


def admin_api_keys_for_organization(*, organization: Organization) -> QuerySet[AdminAPIKey]:
    """``organization``'s admin keys, newest first, revoked ones included (hash deferred: never displayed)."""
    return organization.admin_api_keys.select_related("created_by").defer("secret_hash").order_by("-created_at")


def admin_api_key_get(*, organization: Organization, public_id: str) -> AdminAPIKey:
    """The admin key ``public_id`` of ``organization``; ``Http404`` otherwise (also for another tenant's)."""
    key = organization.admin_api_keys.filter(public_id=public_id).first()
    if key is None:
        raise Http404("No such admin key.")
    return key


@dataclass(frozen=True)
class ResolvedAdminKey:
    """What a ``/v1/organization`` request needs to know about its admin key, cheap to cache."""

    key_id: int
    key_public_id: str
    organization_id: int
    organization_public_id: str
    expires_at: datetime | None
    revoked_at: datetime | None

    @property
    def is_authenticated(self) -> bool:
        return True

    @classmethod
    def from_model(cls, key: AdminAPIKey) -> "ResolvedAdminKey":
        return cls(
            key_id=key.pk,
            key_public_id=key.public_id,
            organization_id=key.organization_id,
            organization_public_id=key.organization.public_id,
            expires_at=key.expires_at,
            revoked_at=key.revoked_at,
        )


def admin_api_key_resolve(*, plaintext: str, cached=UNREAD) -> ResolvedAdminKey | None:
    """Look a plaintext admin key up by its SHA-256; ``None`` when no such key exists.

    Cached for ``API_KEY_CACHE_SECONDS`` like `api_key_resolve` (``cached`` likewise); the
    caller checks revocation and expiry.
    """
    secret_hash = hash_key(plaintext)
    return _cached_resolve(
        admin_api_key_cache_key(secret_hash),
        lambda: AdminAPIKey.objects.select_related("organization").filter(secret_hash=secret_hash).first(),
        ResolvedAdminKey.from_model, cached)


def audit_logs_for_organization(*, organization_id: int, project_ids=None, event_types=None, actor_ids=None,
                                actor_emails=None, resource_ids=None, effective_at: dict | None = None
                                ) -> QuerySet[AuditLog]:
    """``organization_id``'s audit log, newest first, filtered as OpenAI's ``GET /organization/audit_logs``:
    each list given (project public ids, event types, actor ids, actor e-mails, resource ids) must
    contain the entry's value; ``effective_at`` maps ``gt``/``gte``/``lt``/``lte`` to datetimes."""
    entries = AuditLog.objects.filter(organization_id=organization_id)
    for field, values in (("project_public_id", project_ids), ("type", event_types), ("actor_id", actor_ids),
                          ("actor_email", actor_emails), ("resource_id", resource_ids)):
        if values is not None:
            entries = entries.filter(**{f"{field}__in": values})
    for op, moment in (effective_at or {}).items():
        entries = entries.filter(**{f"effective_at__{op}": moment})
    return entries.order_by("-id")
