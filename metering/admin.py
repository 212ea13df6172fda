from django.contrib import admin

from .models import UsageRecord


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    """Read-only view of usage records, filterable by organization, project, key, model and date."""

    list_display = ("request_id", "organization", "project", "api_key", "model", "input_count", "total_tokens",
                    "service_tier", "latency_ms", "created_at")
    list_filter = (
        ("organization", admin.RelatedOnlyFieldListFilter),
        ("project", admin.RelatedOnlyFieldListFilter),
        ("api_key", admin.RelatedOnlyFieldListFilter),
        ("model", admin.RelatedOnlyFieldListFilter),
        "service_tier",
        "created_at",
    )
    search_fields = ("request_id", "user")
    date_hierarchy = "created_at"
    list_select_related = ("organization", "project", "api_key", "model")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
