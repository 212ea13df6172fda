from django.contrib import admin

from .models import AdminAPIKey, APIKey, Membership, Organization, Project


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


@admin.register(AdminAPIKey)
class AdminAPIKeyAdmin(admin.ModelAdmin):
    """Organization admin keys (``sk-admin-``), shown masked; the hash is never displayed."""

    list_display = ("name", "masked", "organization", "created_at", "last_used_at", "expires_at", "revoked_at")
    list_filter = ("organization",)
    search_fields = ("name", "public_id", "organization__name")
    fields = ("public_id", "name", "organization", "masked", "created_at", "last_used_at", "expires_at",
              "revoked_at")
    readonly_fields = ("public_id", "masked", "created_at", "last_used_at")

    def has_add_permission(self, request):
        return False  # created with `create_api_key --admin` or the console (plaintext shown once)
