"""Tenancy models: Organization -> Project -> APIKey, plus Membership (user roles).

Public ids are shaped like OpenAI's (``org_...``, ``proj_...``, ``key_...``); the
integer primary keys never leave the server.
"""
from __future__ import annotations

import secrets
import string

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

_ALPHABET = string.ascii_letters + string.digits


def random_token(length: int) -> str:
    """``length`` chars of base62 from `secrets` (each char ~5.95 bits of entropy)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _org_id() -> str:
    return f"org_{random_token(24)}"


def _project_id() -> str:
    return f"proj_{random_token(24)}"


def _key_id() -> str:
    return f"key_{random_token(16)}"


def _service_account_id() -> str:
    return f"svc_acct_{random_token(24)}"


def _audit_log_id() -> str:
    return f"audit_log-{random_token(24)}"


def allowed_models_field() -> ArrayField:
    """A model allowlist: canonical model names (`embeddings.models.EmbeddingModel.name`); empty =
    every model. Kept as names (not a foreign key: the registry is a floor above), checked by
    `embeddings.services.allowed_models_normalize` on every write path but the Django admin's."""
    return ArrayField(models.CharField(max_length=200), default=list, blank=True,
                      help_text="Model names this may use, comma-separated; empty = every model.")


class Organization(models.Model):
    """A tenant: owns projects, members, limits and the bill."""

    public_id = models.CharField(max_length=32, unique=True, default=_org_id, editable=False)
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [models.UniqueConstraint(Lower("name"), name="organization_name_ci_unique")]
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """A user's role in an organization.

    Roles (most to least powerful): ``owner`` and ``admin`` manage projects, keys
    and members; ``member`` uses and reads; ``reader`` only reads.
    """

    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"
        READER = "reader", "Reader"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "organization"], name="membership_user_org_unique")]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"


class Project(models.Model):
    """A project inside an organization; API keys and usage belong to a project."""

    public_id = models.CharField(max_length=32, unique=True, default=_project_id, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="projects")
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    archived_at = models.DateTimeField(null=True, blank=True)
    allowed_models = allowed_models_field()

    class Meta:
        constraints = [
            models.UniqueConstraint("organization", Lower("name"), name="project_org_name_ci_unique"),
        ]
        ordering = ["organization", "name"]

    def __str__(self) -> str:
        return f"{self.organization.name}/{self.name}"


class KeyBase(models.Model):
    """What every bearer key stores (abstract): never the plaintext.

    Only the SHA-256 hex digest of the key is stored (unique index; keys are 256-bit
    random strings, so an unsalted fast hash is right: PostHog, Sentry do the same).
    ``prefix`` and ``last4`` are kept for display (``sk-proj-AbCd...wxYz``); the
    plaintext exists only in the response that created the key.
    """

    PREFIX = "sk-"

    public_id = models.CharField(max_length=32, unique=True, default=_key_id, editable=False)
    name = models.CharField(max_length=200, blank=True, default="")
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=16, editable=False)
    last4 = models.CharField(max_length=4, editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name or self.public_id} ({self.masked})"

    @property
    def masked(self) -> str:
        """Display form, e.g. ``sk-proj-AbCd...wxYz``; never the whole key."""
        return f"{self.prefix}...{self.last4}"

    def is_active(self, now=None) -> bool:
        """True when neither revoked nor expired at ``now`` (default: the current time)."""
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class ServiceAccount(models.Model):
    """A project's service account (OpenAI's Admin API): a bot identity that owns the project API
    keys made for it, created with its first key (`accounts.services.service_account_create`).
    ``role`` is OpenAI's project role; every service account here is a ``member``."""

    public_id = models.CharField(max_length=40, unique=True, default=_service_account_id, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="service_accounts")
    name = models.CharField(max_length=200)
    role = models.CharField(max_length=16, default="member", editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["project", "id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.public_id})"


class APIKey(KeyBase):
    """A bearer key of a project (``sk-proj-...``), for ``/v1/embeddings`` and ``/v1/models``.

    ``allowed_models``: the models this key may use (empty = all), on top of its project's
    ``allowed_models``; ``service_account``: the owner when a service account's, else the
    ``created_by`` user (or nobody: made by a management command)."""

    PREFIX = "sk-proj-"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="api_keys")
    service_account = models.ForeignKey(ServiceAccount, null=True, blank=True, on_delete=models.SET_NULL,
                                        related_name="api_keys")
    allowed_models = allowed_models_field()

    class Meta(KeyBase.Meta):
        indexes = [models.Index(fields=["project", "-created_at"], name="apikey_project_created")]


class AdminAPIKey(KeyBase):
    """An organization's admin key (``sk-admin-...``) for the ``/v1/organization/...`` API.

    A separate kind from `APIKey`: it belongs to an organization, not a project, and
    cannot call ``/v1/embeddings`` (OpenAI's "Admin API keys" work the same way).
    """

    PREFIX = "sk-admin-"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="admin_api_keys")

    class Meta(KeyBase.Meta):
        indexes = [models.Index(fields=["organization", "-created_at"], name="adminkey_org_created")]


def _invitation_id() -> str:
    return f"inv_{random_token(16)}"


class Invitation(models.Model):
    """An invitation to join ``organization`` with ``role``, sent to ``email``.

    The accept link carries a 256-bit random token; only its SHA-256 is stored (like the API
    keys), so the link is shown once, to the inviter, and mailed once. It can be used once,
    until ``expires_at`` (``INVITATION_MAX_AGE_DAYS``), unless revoked; accepting creates the
    membership (`accounts.invitations.invitation_accept`).
    """

    public_id = models.CharField(max_length=32, unique=True, default=_invitation_id, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Membership.Role.choices, default=Membership.Role.MEMBER)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["organization", "-created_at"], name="invitation_org_created")]

    def __str__(self) -> str:
        return f"{self.email} to {self.organization} ({self.role})"

    def is_pending(self, now=None) -> bool:
        """True while the link can be used: neither accepted, revoked nor expired at ``now``."""
        now = now or timezone.now()
        return self.accepted_at is None and self.revoked_at is None and self.expires_at > now


class AuditLog(models.Model):
    """One change to an organization's tenancy or limits, as OpenAI's audit log object: ``type``
    (``project.created``, ``api_key.deleted``, ``rate_limit.updated``, ...), when
    (``effective_at``), who (``actor``: OpenAI's ``session`` or ``api_key`` actor, or our
    ``command`` / ``system``), the project it was scoped to, and the event's ``details`` (the
    object OpenAI puts under the key named by ``type``).

    Written by `accounts.audit.audit_log_record`, from the signals of every audited model, so
    every path records (admin API, console, Django admin, management commands, shell), inside
    the transaction of the change. Rows are never updated. ``actor_id``, ``actor_email`` and
    ``resource_id`` are copies for the API's filters; the project is kept by public id and name
    (it may be deleted later).
    """

    public_id = models.CharField(max_length=40, unique=True, default=_audit_log_id, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="audit_logs")
    type = models.CharField(max_length=64)
    effective_at = models.DateTimeField(default=timezone.now)
    actor = models.JSONField()
    actor_id = models.CharField(max_length=200, blank=True, default="")
    actor_email = models.CharField(max_length=254, blank=True, default="")
    project_public_id = models.CharField(max_length=32, blank=True, default="")
    project_name = models.CharField(max_length=200, blank=True, default="")
    resource_id = models.CharField(max_length=200, blank=True, default="")
    details = models.JSONField(default=dict)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["organization", "-id"], name="auditlog_org_id")]

    def __str__(self) -> str:
        return f"{self.type} {self.resource_id} at {self.effective_at:%Y-%m-%d %H:%M:%S}"
