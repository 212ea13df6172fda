"""`Limit`: the quotas and rate limits of an organization, a project or an API key."""
from __future__ import annotations

from django.db import models

from accounts.models import APIKey, Organization, Project


class Limit(models.Model):
    """Usage limits of one scope: an organization, one of its projects, or one API key.

    Exactly one row per scope (database constraints):

    * organization scope: ``project`` and ``api_key`` null;
    * project scope: ``project`` set, ``api_key`` null;
    * key scope: ``api_key`` (and its ``project``) set; keys carry RPM/TPM caps only,
      so ``monthly_tokens`` must be null there.

    Units: ``monthly_tokens`` tokens per calendar month (UTC), a hard quota;
    ``rpm`` requests per minute; ``tpm`` tokens per minute (token buckets that refill
    continuously, as OpenAI's do). ``None`` means unlimited. Every applicable limit
    (organization, project and key) is enforced at once by `limits.admission`.
    Write through `limits.services.limit_set` (it also drops the cached copy).
    """

    class Kind(models.TextChoices):
        MONTHLY_TOKENS = "monthly_tokens", "Monthly tokens"
        RPM = "rpm", "Requests per minute"
        TPM = "tpm", "Tokens per minute"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="limits")
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.CASCADE, related_name="limits")
    api_key = models.ForeignKey(APIKey, null=True, blank=True, on_delete=models.CASCADE, related_name="limits")
    monthly_tokens = models.PositiveBigIntegerField(null=True, blank=True,
                                                    help_text="Tokens per calendar month (UTC); empty = unlimited.")
    rpm = models.PositiveIntegerField(null=True, blank=True, help_text="Requests per minute; empty = unlimited.")
    tpm = models.PositiveBigIntegerField(null=True, blank=True, help_text="Tokens per minute; empty = unlimited.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "accounts_limit"  # the table it had in `accounts`, kept with its rows
        constraints = [
            models.UniqueConstraint(fields=["organization"], condition=models.Q(project=None, api_key=None),
                                    name="limit_one_per_organization"),
            models.UniqueConstraint(fields=["project"], condition=models.Q(api_key=None),
                                    name="limit_one_per_project"),
            models.UniqueConstraint(fields=["api_key"], name="limit_one_per_api_key"),
            models.CheckConstraint(condition=models.Q(api_key=None) | models.Q(project__isnull=False),
                                   name="limit_key_scope_has_project"),
            models.CheckConstraint(condition=models.Q(api_key=None) | models.Q(monthly_tokens=None),
                                   name="limit_key_scope_no_monthly_quota"),
        ]

    @property
    def scope(self) -> str:
        """``"organization"``, ``"project"`` or ``"key"``."""
        if self.api_key_id:
            return "key"
        return "project" if self.project_id else "organization"

    def __str__(self) -> str:
        target = self.api_key or self.project or self.organization
        return f"Limits of {self.scope} {target}"
