"""Reads of limits from the database: what applies to a key, and tokens metered for a scope."""
from __future__ import annotations

from datetime import datetime

from accounts.selectors import ResolvedKey

from .models import Limit
from .scopes import Scope, ScopeLimits


def limits_for_key(*, key: ResolvedKey, model: str = "") -> list:
    """The limits that apply to a request made with ``key`` to ``model`` (a canonical model name;
    ``""``: none named): ``[(Scope, ScopeLimits)]`` for its organization, its project, the key
    itself, and, when ``model`` is given and the project has limits for it, the model scope, in
    that order (unset limits are ``None``).

    One database query. (`limits.admission` caches the result per process and model, invalidated
    by the limits version that every change sets.)
    """
    from django.db.models import Q

    scopes = [Scope("organization", key.organization_id, key.organization_public_id),
              Scope("project", key.project_id, key.project_public_id),
              Scope("key", key.key_id, key.key_public_id)]
    found = {s.kind: ScopeLimits() for s in scopes}
    rows = Limit.objects.filter(Q(organization_id=key.organization_id, project=None, api_key=None)
                                | Q(project_id=key.project_id, api_key=None, model__in={"", model})
                                | Q(api_key_id=key.key_id))
    for row in rows:
        found[row.scope] = ScopeLimits(row.monthly_tokens, row.rpm, row.tpm)
    applied = [(scope, found[scope.kind]) for scope in scopes]
    if "model" in found:
        applied.append((Scope("model", key.project_id, key.project_public_id, model), found["model"]))
    return applied


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
