"""Reads for tenancy."""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.cache import cache

from django.db.models import Count, Q, QuerySet
from django.http import Http404
from django.utils import timezone

from .models import AdminAPIKey, APIKey, Limit, Membership, Organization, Project
from .services import admin_api_key_cache_key, api_key_cache_key, hash_key

_MISSING = "missing"


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

    @property
    def is_authenticated(self) -> bool:  # lets DRF's IsAuthenticated accept it as `request.user`
        return True

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
        )


def _cached_resolve(cache_key: str, lookup, resolve):
    """``resolve(lookup())`` cached under ``cache_key`` for ``API_KEY_CACHE_SECONDS``, its absence
    (``None``) too, so unknown keys do not reach the database on every try."""
    cached = cache.get(cache_key)
    if cached == _MISSING:
        return None
    if cached is not None:
        return cached
    row = lookup()
    resolved = resolve(row) if row else None
    cache.set(cache_key, resolved or _MISSING, timeout=settings.API_KEY_CACHE_SECONDS)
    return resolved


def api_key_resolve(*, plaintext: str) -> ResolvedKey | None:
    """Look a plaintext key up by its SHA-256; ``None`` when no such key exists.

    The result (or its absence) is cached for ``API_KEY_CACHE_SECONDS``; revoked and
    expired keys are returned as they are, the caller decides.
    """
    secret_hash = hash_key(plaintext)
    return _cached_resolve(
        api_key_cache_key(secret_hash),
        lambda: APIKey.objects.select_related("project__organization").filter(secret_hash=secret_hash).first(),
        ResolvedKey.from_model)


# --- The console's reads (every one scoped by organization) ---------------------------------


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


def admin_api_key_resolve(*, plaintext: str) -> ResolvedAdminKey | None:
    """Look a plaintext admin key up by its SHA-256; ``None`` when no such key exists.

    Cached for ``API_KEY_CACHE_SECONDS`` like `api_key_resolve`; the caller checks
    revocation and expiry.
    """
    secret_hash = hash_key(plaintext)
    return _cached_resolve(
        admin_api_key_cache_key(secret_hash),
        lambda: AdminAPIKey.objects.select_related("organization").filter(secret_hash=secret_hash).first(),
        ResolvedAdminKey.from_model)


# --- Limits (quotas and rate limits) -------------------------------------------------------------

def limits_for_key(*, key: ResolvedKey) -> list:
    """The limits that apply to a request made with ``key``: ``[(Scope, ScopeLimits)]`` for its
    organization, its project and the key itself, in that order (unset limits are ``None``).

    One database query. (`accounts.admission` caches the result per process, invalidated by
    the limits version that every change sets.)
    """
    from django.db.models import Q

    from .admission import Scope, ScopeLimits

    scopes = [Scope("organization", key.organization_id, key.organization_public_id),
              Scope("project", key.project_id, key.project_public_id),
              Scope("key", key.key_id, key.key_public_id)]
    found = {(s.kind, s.pk): ScopeLimits() for s in scopes}
    rows = Limit.objects.filter(Q(organization_id=key.organization_id, project=None, api_key=None)
                                | Q(project_id=key.project_id, api_key=None) | Q(api_key_id=key.key_id))
    for row in rows:
        pk = {"organization": row.organization_id, "project": row.project_id, "key": row.api_key_id}[row.scope]
        found[(row.scope, pk)] = ScopeLimits(row.monthly_tokens, row.rpm, row.tpm)
    return [(scope, found[(scope.kind, scope.pk)]) for scope in scopes]


def usage_tokens_between(*, scope, start: datetime, end: datetime) -> int:
    """Tokens metered in `billing.UsageRecord` for ``scope`` (an `accounts.admission.Scope` of kind
    organization or project) with ``start <= created_at < end`` (every service tier)."""
    from django.db.models import Sum

    from metering.models import UsageRecord

    field = {"organization": "organization_id", "project": "project_id", "key": "api_key_id"}[scope.kind]
    total = UsageRecord.objects.filter(**{field: scope.pk}, created_at__gte=start, created_at__lt=end) \
        .aggregate(total=Sum("total_tokens"))["total"]
    return int(total or 0)


@dataclass(frozen=True)
class LimitUsage:
    """One limit and how much of it is used, for quota bars.

    ``scope``: ``organization`` / ``project`` / ``key``; ``scope_id`` its public id, ``scope_name``
    its name (a key: its name or masked form). ``kind``: ``monthly_tokens`` (tokens this calendar
    month, UTC), ``rpm`` (requests) or ``tpm`` (tokens) in the rolling minute. ``limit``: int or
    ``None`` (unlimited). ``used``: the amount used now (monthly: including reservations in flight).
    ``resets_at``: monthly: the start of the next month (UTC); RPM/TPM: when the bucket is full
    again, ``None`` when nothing is used (or the limit is unset).
    """

    scope: str
    scope_id: str
    scope_name: str
    kind: str
    limit: int | None
    used: int
    resets_at: datetime | None


def limits_usage_summary(*, organization, project=None) -> list[LimitUsage]:
    """Every limit that applies to ``organization`` (and, when given, to ``project`` and its keys),
    with its current usage: monthly tokens, RPM and TPM of the organization (and the project),
    and the RPM/TPM caps of the project's keys that have one.

    Live values come from the admission store; when it is down (or a counter is missing) the
    monthly figure comes from `billing.UsageRecord`, and RPM/TPM from the usage records of the
    last 60 s. Unlimited RPM/TPM are reported from the usage records too. Never raises for a
    store outage.
    """
    from datetime import timedelta

    from django.db.models import Count, Sum
    from django.utils import timezone

    from metering.models import UsageRecord

    from config.periods import month_bounds

    from .admission import AdmissionUnavailable, BucketState, Scope, ScopeLimits, admission_usage, build_checks

    now = timezone.now()
    month_start, month_end = month_bounds(now)
    rows = {(r.scope, r.api_key_id or r.project_id or r.organization_id): r
            for r in Limit.objects.filter(organization=organization).select_related("api_key")}
    targets = [(Scope("organization", organization.pk, organization.public_id), organization.name)]
    if project is not None:
        targets.append((Scope("project", project.pk, project.public_id), project.name))
        for (kind, pk), row in sorted(rows.items(), key=lambda item: item[0][1]):
            if kind == "key" and row.project_id == project.pk:
                targets.append((Scope("key", pk, row.api_key.public_id), row.api_key.name or row.api_key.masked))

    applied = []
    for scope, _ in targets:
        row = rows.get((scope.kind, scope.pk))
        applied.append((scope, ScopeLimits(row.monthly_tokens, row.rpm, row.tpm) if row else ScopeLimits()))
    monthly, buckets = build_checks(applied=applied, tokens=0, service_tier="flex", month_start=month_start)
    try:
        used_monthly, levels = admission_usage(monthly=monthly, buckets=buckets)
    except AdmissionUnavailable:
        used_monthly, levels = [None] * len(monthly), [None] * len(buckets)

    def recent(scope):
        field = {"organization": "organization_id", "project": "project_id", "key": "api_key_id"}[scope.kind]
        return UsageRecord.objects.filter(**{field: scope.pk}, created_at__gte=now - timedelta(seconds=60)) \
            .aggregate(requests=Count("id"), tokens=Sum("total_tokens"))

    names = {scope: name for scope, name in targets}
    result = []
    for scope, limits in applied:
        if scope.kind != "key":
            i = next(n for n, c in enumerate(monthly) if c.scope == scope)
            used = used_monthly[i]
            if used is None:
                used = usage_tokens_between(scope=scope, start=month_start, end=month_end)
            result.append(LimitUsage(scope.kind, scope.public_id, names[scope], "monthly_tokens",
                                     limits.monthly_tokens, used, month_end))
        for kind in ("rpm", "tpm"):
            limit = getattr(limits, kind)
            if scope.kind == "key" and limit is None:
                continue
            i = next((n for n, c in enumerate(buckets) if c.scope == scope and c.kind == kind), None)
            if i is not None and levels[i] is not None:
                state = BucketState(buckets[i], levels[i])
                used = min(limit, math.ceil(levels[i] - 1e-9))
                resets_at = now + timedelta(milliseconds=state.reset_ms) if levels[i] > 0 else None
            else:
                figures = recent(scope)
                used = int(figures["requests"] if kind == "rpm" else figures["tokens"] or 0)
                resets_at = None
            result.append(LimitUsage(scope.kind, scope.public_id, names[scope], kind, limit, used, resets_at))
    return result
