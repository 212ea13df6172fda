"""Every save or delete that can make a key invalid drops its cached lookup
(`accounts.services.api_key_cache_invalidate`), whoever makes it: a key saved (``expires_at`` or
``revoked_at`` edited in the admin) or deleted (admin delete, bulk "Delete selected", and the
cascades of deleting a project or an organization, for which Django sends ``post_delete`` per
key), a project saved (archived). ``QuerySet.update()`` sends no signals; nothing in the
project changes keys or projects that way (the admin's revoke actions call the services).
"""
from __future__ import annotations

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from .models import AdminAPIKey, APIKey, Project
from .services import api_key_cache_invalidate, project_api_keys_cache_invalidate


@receiver(post_save, sender=APIKey, dispatch_uid="apikey-saved")
@receiver(post_delete, sender=APIKey, dispatch_uid="apikey-deleted")
@receiver(post_save, sender=AdminAPIKey, dispatch_uid="adminkey-saved")
@receiver(post_delete, sender=AdminAPIKey, dispatch_uid="adminkey-deleted")
def key_changed(sender, instance, created: bool = False, **kwargs) -> None:
    """A key was saved or deleted: its cached lookup (absence included, for a new key) goes."""
    api_key_cache_invalidate(instance)


@receiver(post_save, sender=Project, dispatch_uid="project-saved")
def project_changed(sender, instance: Project, created: bool = False, **kwargs) -> None:
    """A project was saved (archived, unarchived, renamed): its keys' cached lookups go."""
    if not created:
        project_api_keys_cache_invalidate(instance)
