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
      so ``monthly_tokens`` must be null there;
    * model scope: ``project`` and ``model`` set, ``api_key`` null: the project's RPM/TPM for
      requests to that model (OpenAI's project rate limits, ``/v1/organization/projects/{id}/rate_limits``),
      on top of the project-wide ones; no monthly quota.

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
    model = models.CharField(max_length=200, blank=True, default="",
                             help_text="A model name: these RPM/TPM apply to the project's requests to it "
                                       "(empty: to every request of the scope).")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "accounts_limit"  # the table it had in `accounts`, kept with its rows
        constraints = [
            models.UniqueConstraint(fields=["organization"], condition=models.Q(project=None, api_key=None),
                                    name="limit_one_per_organization"),
            models.UniqueConstraint(fields=["project", "model"], condition=models.Q(api_key=None),
                                    name="limit_one_per_project_model"),
            models.UniqueConstraint(fields=["api_key"], name="limit_one_per_api_key"),
            models.CheckConstraint(condition=models.Q(api_key=None) | models.Q(project__isnull=False),
                                   name="limit_key_scope_has_project"),
            models.CheckConstraint(condition=models.Q(api_key=None) | models.Q(monthly_tokens=None),
                                   name="limit_key_scope_no_monthly_quota"),
            models.CheckConstraint(condition=models.Q(model="") | models.Q(project__isnull=False, api_key=None,
                                                                           monthly_tokens=None),
                                   name="limit_model_scope_is_project_rates"),
        ]

    @property
    def scope(self) -> str:
        """``"organization"``, ``"project"``, ``"key"`` or ``"model"`` (a project's limits for one model)."""
        if self.api_key_id:
            return "key"
        if self.model:
            return "model"
        return "project" if self.project_id else "organization"

    @property
    def public_id(self) -> str:
        """The id the Admin API and the audit log give it: ``rl-<model>`` for a model scope (OpenAI's
        project rate limit id, unique within its project), else ``rl-`` + the scope's public id."""
        if self.model:
            return f"rl-{self.model}"
        target = self.api_key or self.project or self.organization
        return f"rl-{target.public_id}"

    def __str__(self) -> str:
        target = self.api_key or self.project or self.organization
        return f"Limits of {self.scope} {target}" + (f" for model {self.model}" if self.model else "")



class BatchQueueLimit(models.Model):
    """OpenAI's ``batch_1_day_max_input_tokens`` of an organization for one model: the most input
    tokens its batches of that model may hold enqueued (validated, not finished) at once. A batch
    that would go past it fails at creation (``token_limit_exceeded``; `batches.services`).

    ``model`` is the registry name of the model (`embeddings.models.EmbeddingModel.name`; limits
    sit below the registry's floor, so it is named, not referenced). No row, or ``None``: unlimited.
    Write through `limits.services.batch_queue_limit_set`.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="batch_queue_limits")
    model = models.CharField(max_length=200)
    batch_1_day_max_input_tokens = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Input tokens enqueued in batches at once; empty = unlimited.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "model"], name="batch_queue_limit_unique")]

    def __str__(self) -> str:
        return f"Batch queue limit of {self.organization} for {self.model}"
