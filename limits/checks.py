"""What a request is checked against: one `Check` per counter (monthly quota, RPM and TPM
bucket per scope), their store keys, and `build_checks` from the limits that apply."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings

from .scopes import Scope, ScopeLimits

# ---------------------------------------------------------------------------------------------------
# What a request is checked against.
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """One counter a request is checked against: ``kind`` ``monthly_tokens`` / ``rpm`` / ``tpm``,
    the scope, the limit (``None`` = count only), the cost (tokens or requests) and the store key."""

    kind: str
    scope: Scope
    limit: int | None
    cost: int
    key: str


def monthly_key(scope: Scope, month_start: datetime) -> str:
    """Store key of a scope's monthly counter, e.g. ``adm:m:proj:12:202611``."""
    return f"{settings.ADMISSION_KEY_PREFIX}:m:{scope.slug}:{scope.pk}:{month_start:%Y%m}"


def bucket_key(scope: Scope, kind: str) -> str:
    """Store key of a scope's RPM or TPM bucket, e.g. ``adm:b:key:7:rpm``, ``adm:b:projmodel:3:rpm:<model>``."""
    key = f"{settings.ADMISSION_KEY_PREFIX}:b:{scope.slug}:{scope.pk}:{kind}"
    return f"{key}:{scope.model}" if scope.model else key


def build_checks(*, applied: list[tuple[Scope, ScopeLimits]], tokens: int, service_tier: str,
                 month_start: datetime) -> tuple[list[Check], list[Check]]:
    """The monthly checks (organization and project, always counted) and the RPM/TPM checks (of every
    scope: organization, project, key, and the project's limits for the request's model).

    ``flex`` requests and ``batch`` lines count to the monthly quota but do not consume RPM/TPM
    (cost 0: the buckets are only read, for the headers). Returns ``(monthly, buckets)``.
    """
    consume = service_tier not in ("flex", "batch")
    monthly, buckets = [], []
    for scope, limits in applied:
        if scope.kind in ("organization", "project"):
            monthly.append(Check("monthly_tokens", scope, limits.monthly_tokens, tokens,
                                 monthly_key(scope, month_start)))
        if limits.rpm is not None:
            buckets.append(Check("rpm", scope, limits.rpm, 1 if consume else 0, bucket_key(scope, "rpm")))
        if limits.tpm is not None:
            buckets.append(Check("tpm", scope, limits.tpm, tokens if consume else 0, bucket_key(scope, "tpm")))
    return monthly, buckets


def _args(checks: list[Check], extras: list) -> list:
    args = []
    for check, extra in zip(checks, extras):
        args += [-1 if check.limit is None else check.limit, check.cost, extra]
    return args
