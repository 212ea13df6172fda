"""Writes of limits: `limit_set`, and `limit_cache_drop`, which every change to a limit runs
(`limits.signals.limit_changed`)."""
from __future__ import annotations

from django.db import transaction

from accounts.models import APIKey, Organization, Project

from .models import BatchQueueLimit, Limit


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()
"""Marks a limit that `limit_set` leaves as it is (``None`` clears it: unlimited)."""

# The largest value each limit column holds (Postgres integer / bigint; counters stay exact in Lua
# doubles up to 2**53).
LIMIT_MAX = {"monthly_tokens": 2**53, "rpm": 2**31 - 1, "tpm": 2**53}


def limit_set(*, organization: Organization, project: Project | None = None, api_key: APIKey | None = None,
              model: str = "", monthly_tokens: int | None | _Unset = UNSET, rpm: int | None | _Unset = UNSET,
              tpm: int | None | _Unset = UNSET):
    """Set the limits of one scope: the organization, a project of it, a key of that project, or the
    project's requests to ``model`` (a canonical model name; RPM/TPM only: OpenAI's project rate
    limits).

    ``monthly_tokens`` (tokens per calendar month, UTC, hard), ``rpm`` (requests per minute),
    ``tpm`` (tokens per minute): an int >= 0 sets the limit, ``None`` clears it (unlimited),
    `UNSET` (the default) leaves it. Keys take RPM/TPM only. Returns the `limits.models.Limit` row.

    Takes effect at once: every process's cached copy is invalidated when the transaction
    commits (a new limits version that each reservation checks atomically; the embedded
    default does not cache limits).

    Raises ``ValueError`` for a project/key outside the organization/project, a negative value,
    a monthly quota on a key or a model, or a model without a project (or with a key).
    """
    if model and (project is None or api_key is not None):
        raise ValueError("Limits per model are a project's: give the project and no key.")
    if model and monthly_tokens not in (UNSET, None):
        raise ValueError("Limits per model are RPM/TPM only; set monthly quotas on the project or organization.")
    if api_key is not None:
        project = project or api_key.project
        if api_key.project_id != project.pk:
            raise ValueError(f"Key {api_key.public_id} does not belong to project {project.public_id}.")
        if monthly_tokens not in (UNSET, None):
            raise ValueError("Keys take RPM/TPM caps only; set monthly quotas on the project or organization.")
    if project is not None and project.organization_id != organization.pk:
        raise ValueError(f"Project {project.public_id} does not belong to organization {organization.public_id}.")
    values = {name: value for name, value in (("monthly_tokens", monthly_tokens), ("rpm", rpm), ("tpm", tpm))
              if value is not UNSET}
    for name, value in values.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or not 0 <= value <= LIMIT_MAX[name]):
            raise ValueError(f"{name} must be an integer from 0 to {LIMIT_MAX[name]:,} or None, not {value!r}.")

    with transaction.atomic():
        limit, _ = Limit.objects.select_for_update().get_or_create(
            organization=organization, project=project, api_key=api_key, model=model)
        for name, value in values.items():
            setattr(limit, name, value)
        limit.save()  # the cached copies are dropped by its signal (limits.signals.limit_changed)
    return limit


def limit_cache_drop(*, limit) -> None:
    """Make every process re-read the limits (after a change to ``limit``, also from the admin):
    `limits.admission.admission_limits_changed`."""
    from .admission import admission_limits_changed

    admission_limits_changed()


def batch_queue_limit_set(*, organization: Organization, model: str, max_input_tokens: int | None) -> BatchQueueLimit:
    """Set the organization's ``batch_1_day_max_input_tokens`` for the model named ``model``
    (tokens; ``None``: unlimited). Read by each batch's validation, so it applies to the next batch.
    Raises ``ValueError`` for a negative or too large value."""
    if max_input_tokens is not None and not 0 <= max_input_tokens <= LIMIT_MAX["tpm"]:
        raise ValueError(f"batch_1_day_max_input_tokens must be from 0 to {LIMIT_MAX['tpm']:,} or None.")
    limit, _ = BatchQueueLimit.objects.update_or_create(
        organization=organization, model=model, defaults={"batch_1_day_max_input_tokens": max_input_tokens})
    return limit
