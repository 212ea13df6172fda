"""Signal receivers of `accounts`: the key cache and the audit log.

**Key cache.** Every save or delete that can make a key invalid replaces its cached lookup by a
mark (`accounts.services.api_key_cache_invalidate`; a new key's is deleted), whoever makes it: a
key saved (``expires_at`` or ``revoked_at`` edited in the admin) or deleted (admin delete, bulk "Delete selected", and the
cascades of deleting a project or an organization, for which Django sends ``post_delete`` per
key), a project saved (archived, its model allowlist changed). ``QuerySet.update()`` sends no
signals; nothing in the project changes keys or projects that way (the admin's revoke actions call
the services; ``last_used_at`` is written with ``update()`` on purpose: not a change to audit).

**Audit log.** Every create, change and delete of an organization's name, projects, project and
admin keys, service accounts, members and invitations is recorded (`accounts.audit`), with
OpenAI's event types: ``project.created|updated|archived|deleted``,
``api_key.created|updated|deleted`` (a revocation is ``api_key.deleted``: the key is gone for its
users), ``service_account.created|updated|deleted``, ``user.added|updated|deleted``,
``invite.sent|accepted|deleted``, ``organization.updated``.
"""
from __future__ import annotations

from django.db.models.signals import post_delete, post_save, pre_delete
from django.dispatch import receiver

from .audit import (audit_changes, audit_log_record, audit_track, audit_value, organization_delete_begins,
                    organization_delete_ends, user_public_id)
from .models import AdminAPIKey, APIKey, Invitation, Membership, Organization, Project, ServiceAccount
from .services import api_key_cache_invalidate, project_api_keys_cache_invalidate

audit_track(Organization, "name")
audit_track(Project, "name", "archived_at", "allowed_models")
audit_track(APIKey, "name", "expires_at", "revoked_at", "allowed_models")
audit_track(AdminAPIKey, "name", "expires_at", "revoked_at")
audit_track(ServiceAccount, "name")
audit_track(Membership, "role")
audit_track(Invitation, "accepted_at", "revoked_at")


@receiver(post_save, sender=APIKey, dispatch_uid="apikey-saved")
@receiver(post_delete, sender=APIKey, dispatch_uid="apikey-deleted")
@receiver(post_save, sender=AdminAPIKey, dispatch_uid="adminkey-saved")
@receiver(post_delete, sender=AdminAPIKey, dispatch_uid="adminkey-deleted")
def key_changed(sender, instance, created: bool = False, **kwargs) -> None:
    """A key was saved or deleted: its cached lookup (absence included, for a new key) goes."""
    api_key_cache_invalidate(instance, new=created)


@receiver(post_save, sender=Project, dispatch_uid="project-saved")
def project_changed(sender, instance: Project, created: bool = False, **kwargs) -> None:
    """A project was saved (archived, unarchived, renamed, allowlist changed): its keys' cached lookups go."""
    if not created:
        project_api_keys_cache_invalidate(instance)


# --- The audit log ------------------------------------------------------------------------------


def _updates(changes: dict) -> dict:
    """OpenAI's ``changes_requested``: the new values; a new ``name`` is also given as ``title``."""
    requested = {field: new for field, (_, new) in changes.items()}
    if "name" in requested:
        requested["title"] = requested["name"]
    return requested


def _record_update(changes: dict, *, kind: str, organization_id: int, resource_id: str,
                   project: Project | None = None, ended: str = "", ended_type: str = "") -> None:
    """Record ``<kind>.updated`` for ``changes``; when the field ``ended`` went from empty to set
    (``archived_at``, ``revoked_at``), record ``ended_type`` instead for that field."""
    if ended and ended in changes and changes[ended][0] is None:
        del changes[ended]
        audit_log_record(organization_id=organization_id, type=ended_type, resource_id=resource_id,
                         details={"id": resource_id}, project=project)
    if changes:
        audit_log_record(organization_id=organization_id, type=f"{kind}.updated", resource_id=resource_id,
                         details={"id": resource_id, "changes_requested": _updates(changes)}, project=project)


@receiver(pre_delete, sender=Organization, dispatch_uid="audit-organization-deleting")
def organization_deleting(sender, instance: Organization, **kwargs) -> None:
    organization_delete_begins(instance.pk)


@receiver(post_delete, sender=Organization, dispatch_uid="audit-organization-deleted")
def organization_deleted(sender, instance: Organization, **kwargs) -> None:
    organization_delete_ends(instance.pk)


@receiver(post_save, sender=Organization, dispatch_uid="audit-organization-saved")
def organization_saved(sender, instance: Organization, created: bool = False, **kwargs) -> None:
    changes = audit_changes(instance)
    if not created:
        _record_update(changes, kind="organization", organization_id=instance.pk,
                       resource_id=instance.public_id)


@receiver(post_save, sender=Project, dispatch_uid="audit-project-saved")
def project_saved(sender, instance: Project, created: bool = False, **kwargs) -> None:
    changes = audit_changes(instance)
    if created:
        audit_log_record(organization_id=instance.organization_id, type="project.created",
                         resource_id=instance.public_id, project=instance,
                         details={"id": instance.public_id, "data": {"name": instance.name, "title": instance.name,
                                                                     "allowed_models": instance.allowed_models}})
    else:
        _record_update(changes, kind="project", organization_id=instance.organization_id,
                       resource_id=instance.public_id, project=instance, ended="archived_at",
                       ended_type="project.archived")


@receiver(post_delete, sender=Project, dispatch_uid="audit-project-deleted")
def project_deleted(sender, instance: Project, **kwargs) -> None:
    audit_log_record(organization_id=instance.organization_id, type="project.deleted",
                     resource_id=instance.public_id, details={"id": instance.public_id}, project=instance)


def _key_scope(key) -> tuple[int, Project | None]:
    if isinstance(key, AdminAPIKey):
        return key.organization_id, None
    project = Project.objects.filter(pk=key.project_id).first()  # gone: the cascade of its organization
    return (project.organization_id if project else None), project


@receiver(post_save, sender=APIKey, dispatch_uid="audit-apikey-saved")
@receiver(post_save, sender=AdminAPIKey, dispatch_uid="audit-adminkey-saved")
def key_saved(sender, instance, created: bool = False, **kwargs) -> None:
    changes = audit_changes(instance)
    organization_id, project = _key_scope(instance)
    if organization_id is None:
        return
    if created:
        data = {"name": instance.name, "kind": "admin" if sender is AdminAPIKey else "project",
                "redacted_value": instance.masked, "expires_at": audit_value(instance.expires_at)}
        if sender is APIKey:
            data.update(allowed_models=instance.allowed_models,
                        service_account_id=instance.service_account.public_id if instance.service_account_id else None)
        audit_log_record(organization_id=organization_id, type="api_key.created", resource_id=instance.public_id,
                         details={"id": instance.public_id, "data": data}, project=project)
    else:
        _record_update(changes, kind="api_key", organization_id=organization_id,
                       resource_id=instance.public_id, project=project, ended="revoked_at",
                       ended_type="api_key.deleted")


@receiver(post_delete, sender=APIKey, dispatch_uid="audit-apikey-deleted")
@receiver(post_delete, sender=AdminAPIKey, dispatch_uid="audit-adminkey-deleted")
def key_deleted(sender, instance, **kwargs) -> None:
    organization_id, project = _key_scope(instance)
    if organization_id is not None:
        audit_log_record(organization_id=organization_id, type="api_key.deleted", resource_id=instance.public_id,
                         details={"id": instance.public_id}, project=project)


@receiver(post_save, sender=ServiceAccount, dispatch_uid="audit-service-account-saved")
def service_account_saved(sender, instance: ServiceAccount, created: bool = False, **kwargs) -> None:
    changes = audit_changes(instance)
    project = instance.project
    if created:
        audit_log_record(organization_id=project.organization_id, type="service_account.created",
                         resource_id=instance.public_id, project=project,
                         details={"id": instance.public_id, "data": {"role": instance.role, "name": instance.name}})
    else:
        _record_update(changes, kind="service_account", organization_id=project.organization_id,
                       resource_id=instance.public_id, project=project)


@receiver(post_delete, sender=ServiceAccount, dispatch_uid="audit-service-account-deleted")
def service_account_deleted(sender, instance: ServiceAccount, **kwargs) -> None:
    project = Project.objects.filter(pk=instance.project_id).first()
    if project is not None:
        audit_log_record(organization_id=project.organization_id, type="service_account.deleted",
                         resource_id=instance.public_id, details={"id": instance.public_id}, project=project)


@receiver(post_save, sender=Membership, dispatch_uid="audit-membership-saved")
def membership_saved(sender, instance: Membership, created: bool = False, **kwargs) -> None:
    changes = audit_changes(instance)
    uid = user_public_id(instance.user)
    if created:
        audit_log_record(organization_id=instance.organization_id, type="user.added", resource_id=uid,
                         details={"id": uid, "data": {"role": instance.role, "email": instance.user.email,
                                                      "username": instance.user.get_username()}})
    else:
        _record_update(changes, kind="user", organization_id=instance.organization_id, resource_id=uid)


@receiver(post_delete, sender=Membership, dispatch_uid="audit-membership-deleted")
def membership_deleted(sender, instance: Membership, **kwargs) -> None:
    uid = f"user-{instance.user_id}"
    audit_log_record(organization_id=instance.organization_id, type="user.deleted", resource_id=uid,
                     details={"id": uid})


@receiver(post_save, sender=Invitation, dispatch_uid="audit-invitation-saved")
def invitation_saved(sender, instance: Invitation, created: bool = False, **kwargs) -> None:
    changes = audit_changes(instance)
    org, pid = instance.organization_id, instance.public_id
    if created:
        audit_log_record(organization_id=org, type="invite.sent", resource_id=pid,
                         details={"id": pid, "data": {"email": instance.email, "role": instance.role}})
        return
    for field, event in (("accepted_at", "invite.accepted"), ("revoked_at", "invite.deleted")):
        if field in changes and changes[field][0] is None:
            audit_log_record(organization_id=org, type=event, resource_id=pid, details={"id": pid})


@receiver(post_delete, sender=Invitation, dispatch_uid="audit-invitation-deleted")
def invitation_deleted(sender, instance: Invitation, **kwargs) -> None:
    audit_log_record(organization_id=instance.organization_id, type="invite.deleted",
                     resource_id=instance.public_id, details={"id": instance.public_id})
