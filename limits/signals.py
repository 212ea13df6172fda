"""Every change to a `Limit`, whoever makes it (Admin API, ``set_limits``, the Django admin and its
bulk delete, a cascade, the shell), applies to the next request (`limit_changed`: every process
re-reads the limits) and is in the organization's audit log (`accounts.audit`): OpenAI's
``rate_limit.updated`` (``changes_requested`` with OpenAI's names, ``max_requests_per_1_minute`` for RPM and
``max_tokens_per_1_minute`` for TPM, and ``monthly_tokens``; ``scope`` says whose limit it is) and
``rate_limit.deleted``."""
from __future__ import annotations

from django.core.exceptions import ObjectDoesNotExist
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from accounts.audit import audit_changes, audit_log_record, audit_track

from .models import Limit
from .services import limit_cache_drop

# Our columns -> OpenAI's project rate limit fields (monthly_tokens has no OpenAI counterpart).
OPENAI_FIELDS = {"rpm": "max_requests_per_1_minute", "tpm": "max_tokens_per_1_minute",
                 "monthly_tokens": "monthly_tokens"}

audit_track(Limit, *OPENAI_FIELDS)


def _scope(limit: Limit) -> dict:
    return {"type": limit.scope, "model": limit.model or None,
            "api_key_id": limit.api_key.public_id if limit.api_key_id else None}


@receiver(post_save, sender=Limit, dispatch_uid="audit-limit-saved")
def limit_saved(sender, instance: Limit, created: bool = False, **kwargs) -> None:
    changes = audit_changes(instance)
    if created:
        changes = {f: (None, getattr(instance, f)) for f in OPENAI_FIELDS if getattr(instance, f) is not None}
    if changes:
        audit_log_record(organization_id=instance.organization_id, type="rate_limit.updated",
                         resource_id=instance.public_id, project=instance.project,
                         details={"id": instance.public_id, "scope": _scope(instance),
                                  "changes_requested": {OPENAI_FIELDS[f]: new for f, (_, new) in changes.items()}})


@receiver(post_delete, sender=Limit, dispatch_uid="audit-limit-deleted")
def limit_deleted(sender, instance: Limit, **kwargs) -> None:
    try:  # the scope's rows outlive it within a cascade (Django deletes dependents first)
        rid, project, scope = instance.public_id, instance.project, _scope(instance)
    except ObjectDoesNotExist:
        return
    audit_log_record(organization_id=instance.organization_id, type="rate_limit.deleted", resource_id=rid,
                     details={"id": rid, "scope": scope}, project=project)


@receiver(post_save, sender=Limit, dispatch_uid="limit-saved-cache")
@receiver(post_delete, sender=Limit, dispatch_uid="limit-deleted-cache")
def limit_changed(sender, instance: Limit, **kwargs) -> None:
    """Have every process re-read the limits (`limit_cache_drop`): now, and again once the change
    commits (a reader may re-cache the old row in between)."""
    limit_cache_drop(limit=instance)
    transaction.on_commit(lambda: limit_cache_drop(limit=instance))
