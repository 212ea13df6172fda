from django.contrib import admin

from .models import Limit


@admin.register(Limit)
class LimitAdmin(admin.ModelAdmin):
    """Quotas and rate limits per organization / project / key (empty = unlimited).

    Edits and deletes, one or selected, apply to the next request (`limits.signals.limit_changed`).
    """

    list_display = ("__str__", "organization", "project", "api_key", "model", "monthly_tokens", "rpm", "tpm",
                    "updated_at")
    list_filter = ("organization",)
    search_fields = ("organization__name", "organization__public_id", "project__name", "project__public_id",
                     "api_key__public_id", "api_key__name")
    autocomplete_fields = ("organization", "project")
    raw_id_fields = ("api_key",)
    readonly_fields = ("updated_at",)

    def get_readonly_fields(self, request, obj=None):
        """A limit's scope (organization, project, key, model) is set when it is added: moving a limit
        to another scope is a delete and an add, each effective on the next request."""
        scope = ("organization", "project", "api_key", "model")
        return self.readonly_fields if obj is None else (*self.readonly_fields, *scope)
