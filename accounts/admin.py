from django.contrib import admin
from django.db import transaction

from .models import APIKey, Limit, Membership, Organization, Project
from .services import limit_cache_drop


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ("user",)


class ProjectInline(admin.TabularInline):
    model = Project
    extra = 0
    fields = ("name", "public_id", "created_at", "archived_at")
    readonly_fields = ("public_id", "created_at")
    show_change_link = True


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ("name", "public_id", "created_at")
    search_fields = ("name", "public_id")
    readonly_fields = ("public_id", "created_at")
    inlines = [ProjectInline, MembershipInline]


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("name", "organization", "public_id", "created_at", "archived_at")
    list_filter = ("organization",)
    search_fields = ("name", "public_id", "organization__name")
    readonly_fields = ("public_id", "created_at")


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    """Keys are shown masked; the hash is never displayed."""

    list_display = ("name", "masked", "project", "created_at", "last_used_at", "expires_at", "revoked_at")
    list_filter = ("project__organization",)
    search_fields = ("name", "public_id", "project__name")
    fields = ("public_id", "name", "project", "masked", "created_at", "last_used_at", "expires_at", "revoked_at")
    readonly_fields = ("public_id", "masked", "created_at", "last_used_at")

    def has_add_permission(self, request):
        return False  # keys are created with `create_api_key` or the console, where the plaintext is shown once


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "organization", "role", "created_at")
    list_filter = ("role", "organization")


@admin.register(Limit)
class LimitAdmin(admin.ModelAdmin):
    """Quotas and rate limits per organization / project / key (empty = unlimited).

    Edits apply to the next request (the cached copy is dropped on save).
    """

    list_display = ("__str__", "organization", "project", "api_key", "monthly_tokens", "rpm", "tpm", "updated_at")
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
