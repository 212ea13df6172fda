"""Reads of limits from the database: what applies to a key, and tokens metered for a scope."""
from __future__ import annotations

from datetime import datetime

from accounts.selectors import ResolvedKey

from .models import Limit
from .scopes import Scope, ScopeLimits


def limits_for_key(*, key: ResolvedKey) -> list:
    """The limits that apply to a request made with ``key``: ``[(Scope, ScopeLimits)]`` for its
    organization, its project and the key itself, in that order (unset limits are ``None``).

    One database query. (`limits.admission` caches the result per process, invalidated by
    the limits version that every change sets.)
    """
    from django.db.models import Q

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
    """Tokens metered in `billing.UsageRecord` for ``scope`` (a `limits.scopes.Scope` of kind
    organization or project) with ``start <= created_at < end`` (every service tier)."""
    from django.db.models import Sum

    from metering.models import UsageRecord

    field = {"organization": "organization_id", "project": "project_id", "key": "api_key_id"}[scope.kind]
    total = UsageRecord.objects.filter(**{field: scope.pk}, created_at__gte=start, created_at__lt=end) \
        .aggregate(total=Sum("total_tokens"))["total"]
    return int(total or 0)


def batch_queue_limit_get(*, organization_id: int, model: str) -> int | None:
    """``batch_1_day_max_input_tokens`` of the organization for the model named ``model`` (tokens),
    or ``None`` (unlimited)."""
    from .models import BatchQueueLimit

    return (BatchQueueLimit.objects.filter(organization_id=organization_id, model=model)
            .values_list("batch_1_day_max_input_tokens", flat=True).first())
