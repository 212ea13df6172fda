"""The audit log: who changed what in an organization, and when, whatever path made the change.

**What and when**: `audit_log_record` writes one `accounts.models.AuditLog` row (OpenAI's audit
log object). The signal receivers of every audited model call it (`accounts.signals` for
organizations, projects, keys, service accounts, members and invitations; `limits.signals` for
limits) on each create, change and delete, inside the change's transaction, so the Admin API,
the console, the Django admin, management commands and the shell all record, and a change that
rolls back leaves no entry. What changed comes from `audit_changes`: the tracked fields'
values as loaded (``post_init``) against the values saved.

**Who** (`audit_actor`): the request being served, bound by `AuditActorMiddleware`: an admin key
(OpenAI's ``api_key`` actor) or a signed-in user of the console or the Django admin (OpenAI's
``session`` actor, with the client address and ``source``: ``console`` or ``admin``). Outside a
request: a management command run through ``manage.py`` (``command`` actor: its name and the OS
user), else ``system`` (the process). `audit_actor_as` sets one explicitly.
"""
from __future__ import annotations

import contextlib
import getpass
import os
import sys
from contextvars import ContextVar
from datetime import datetime

from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models.signals import post_init

from config.client_address import client_ip

from .models import AuditLog, Project
from .selectors import ResolvedAdminKey

# The event types recorded (OpenAI's names; `accounts.signals`, `limits.signals`).
EVENT_TYPES = ("api_key.created", "api_key.updated", "api_key.deleted", "invite.sent", "invite.accepted",
               "invite.deleted", "organization.updated", "project.created", "project.updated", "project.archived",
               "project.deleted", "rate_limit.updated", "rate_limit.deleted", "service_account.created",
               "service_account.updated", "service_account.deleted", "user.added", "user.updated", "user.deleted")

_request: ContextVar = ContextVar("audit_request", default=None)
_actor: ContextVar = ContextVar("audit_actor", default=None)
# Organizations being deleted: the cascade's own deletes are not recorded (their rows would
# reference the organization that the same transaction deletes, and its log goes with it).
_deleting: ContextVar[frozenset] = ContextVar("audit_deleting_organizations", default=frozenset())

# model -> the fields whose changes are recorded
_TRACKED: dict[type, tuple[str, ...]] = {}


class AuditActorMiddleware:
    """Binds the request being served, so a change made while serving it names its actor
    (`audit_actor`; read when the change is recorded, after authentication ran)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        # A request starts with no organization being deleted: one whose delete failed halfway
        # (its post_delete never ran) must not stay muted in this thread's later requests.
        token, deleting = _request.set(request), _deleting.set(frozenset())
        try:
            return self.get_response(request)
        finally:
            _deleting.reset(deleting)
            _request.reset(token)


@contextlib.contextmanager
def audit_actor_as(actor: dict, *, actor_id: str = "", email: str = ""):
    """Record changes made inside the block as made by ``actor`` (an audit log actor object)."""
    token = _actor.set((actor, actor_id, email))
    try:
        yield
    finally:
        _actor.reset(token)


def user_public_id(user) -> str:
    """The id a user has in the Admin API and the audit log: ``user-<pk>``."""
    return f"user-{user.pk}"


def _request_actor(request) -> tuple[dict, str, str] | None:
    user = getattr(request, "user", None)
    if isinstance(user, ResolvedAdminKey):
        return ({"type": "api_key", "api_key": {"id": user.key_public_id, "type": "admin"}},
                user.key_public_id, "")
    if isinstance(user, AbstractBaseUser) and user.is_authenticated:
        source = "admin" if request.path.startswith("/admin/") else "console"
        uid = user_public_id(user)
        return ({"type": "session", "session": {
            "user": {"id": uid, "email": user.email, "username": user.get_username()},
            "ip_address": client_ip(request), "source": source}}, uid, user.email)
    return None


def _process_actor() -> tuple[dict, str, str]:
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    if program in ("manage.py", "django-admin") and len(sys.argv) > 1:
        try:
            os_user = getpass.getuser()
        except (KeyError, OSError):  # no name for this uid (containers)
            os_user = str(os.getuid())
        return {"type": "command", "command": {"name": sys.argv[1], "os_user": os_user}}, sys.argv[1], ""
    return {"type": "system", "system": {"process": program}}, "", ""


def audit_actor() -> tuple[dict, str, str]:
    """Who is making changes now: ``(actor object, actor id, e-mail)`` (see the module's docstring).

    The actor object is OpenAI's (``{"type": "session", "session": {"user": {...}, "ip_address"}}``
    or ``{"type": "api_key", "api_key": {"id", "type": "admin"}}``) or ours (``{"type": "command",
    "command": {"name", "os_user"}}``, ``{"type": "system", "system": {"process"}}``)."""
    explicit = _actor.get()
    if explicit is not None:
        return explicit
    request = _request.get()
    return (request is not None and _request_actor(request)) or _process_actor()


def audit_log_record(*, organization_id: int, type: str, resource_id: str, details: dict,
                     project: Project | None = None) -> AuditLog | None:
    """Write one audit log entry of ``organization_id``: ``type`` (OpenAI's event type, e.g.
    ``project.created``), the changed object's id (``resource_id``), ``details`` (OpenAI's
    per-type object: ``{"id", "data"}`` for a creation, ``{"id", "changes_requested"}`` for an
    update), the project it concerns, and `audit_actor`. ``None`` (nothing written) while the
    organization itself is being deleted."""
    if organization_id in _deleting.get():
        return None
    actor, actor_id, email = audit_actor()
    return AuditLog.objects.create(
        organization_id=organization_id, type=type, actor=actor, actor_id=actor_id, actor_email=email,
        project_public_id=project.public_id if project else "", project_name=project.name if project else "",
        resource_id=resource_id, details=details)


def organization_delete_begins(organization_id: int) -> None:
    """From now until `organization_delete_ends`, record nothing for ``organization_id`` (it is being
    deleted, its cascade included: called from its ``pre_delete`` and ``post_delete`` signals)."""
    _deleting.set(_deleting.get() | {organization_id})


def organization_delete_ends(organization_id: int) -> None:
    _deleting.set(_deleting.get() - {organization_id})


def audit_value(value):
    """A tracked value as the log stores it: datetimes as Unix seconds (OpenAI's timestamps)."""
    if isinstance(value, datetime):
        return int(value.timestamp())
    return value


def _snapshot(instance) -> None:
    deferred = instance.get_deferred_fields()
    instance._audit_loaded = {f: getattr(instance, f) for f in _TRACKED[type(instance)] if f not in deferred}


def _on_init(sender, instance, **kwargs) -> None:
    _snapshot(instance)


def audit_track(model: type, *fields: str) -> None:
    """Record the values of ``fields`` of every ``model`` instance as loaded, for `audit_changes`."""
    _TRACKED[model] = fields
    post_init.connect(_on_init, sender=model, weak=False, dispatch_uid=f"audit-track-{model._meta.label}")


def audit_changes(instance) -> dict[str, tuple]:
    """``{field: (before, after)}`` of the tracked fields that changed since ``instance`` was loaded
    or last saved (fields not loaded are left out), values through `audit_value`; then takes the
    current values as the new reference (call once per save)."""
    before = getattr(instance, "_audit_loaded", {})
    changes = {}
    for field, old in before.items():
        new = getattr(instance, field)
        if new != old:
            changes[field] = (audit_value(old), audit_value(new))
    _snapshot(instance)
    return changes
