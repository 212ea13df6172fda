"""How much of each limit is used: the console's quota bars (`limits_usage_summary`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from .admission import admission_usage
from .checks import build_checks
from .headers import BucketState
from .store import AdmissionUnavailable
from .models import Limit
from .scopes import Scope, ScopeLimits
from .selectors import usage_tokens_between


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
