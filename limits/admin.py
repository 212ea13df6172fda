from django.contrib import admin
from django.db import transaction

from .models import Limit
from .services import limit_cache_drop


@admin.register(Limit)
class LimitAdmin(admin.ModelAdmin):
    """Quotas and rate limits per organization / project / key (empty = unlimited).

    Edits apply to the next request (the cached copy is dropped on save).
    """

    list_display = ("__str__", "organization", "project", "api_key", "model", "monthly_tokens", "rpm", "tpm",
                    "updated_at")
    list_filter = ("organization",)
    search_fields = ("organization__name", "organization__public_id", "project__name", "project__public_id",
                     "api_key__public_id", "api_key__name")
    autocomplete_fields = ("organization", "project")
    raw_id_fields = ("api_key",)
    readonly_fields = ("updated_at",)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        limit_cache_drop(limit=obj)
        transaction.on_commit(lambda: limit_cache_drop(limit=obj))

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        limit_cache_drop(limit=obj)
        transaction.on_commit(lambda: limit_cache_drop(limit=obj))
