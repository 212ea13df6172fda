"""The Django admin for staff: organizations, projects, keys, memberships, limits.

API keys: "Add" creates the key through `accounts.services.api_key_create` and shows
the plaintext once, on the response page (it is stored nowhere); "Revoke" is an
action that calls `api_key_revoke` (so the auth cache is dropped too); the hash is
never displayed, not even read-only.
"""
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.views.decorators.cache import never_cache

from .models import AdminAPIKey, APIKey, AuditLog, Membership, Organization, Project, ServiceAccount
from .services import admin_api_key_revoke, api_key_create, api_key_revoke


def revoke_selected(model_admin, request, queryset, revoke, noun: str) -> None:
    """Admin action body: ``revoke`` (a service, so the auth cache is dropped too) every
    unrevoked key of ``queryset`` and report how many."""
    revoked = 0
    for key in queryset.filter(revoked_at__isnull=True):
        revoke(key)
        revoked += 1
    model_admin.message_user(request, f"Revoked {revoked} {noun}.", messages.SUCCESS)


class MembershipInlineForm(forms.ModelForm):
    """A membership row: the user is chosen when the row is added, fixed after (`OwnerFixedAdmin`);
    the role stays editable."""

    class Meta:
        model = Membership
        fields = ("user", "role")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.fields["user"].disabled = True


class MembershipInline(admin.TabularInline):
    model = Membership
    form = MembershipInlineForm
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
    list_display = ("name", "public_id", "project_count", "member_count", "created_at")
    search_fields = ("name", "public_id")
    readonly_fields = ("public_id", "created_at")
    inlines = [ProjectInline, MembershipInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            _projects=Count("projects", distinct=True), _members=Count("memberships", distinct=True))

    @admin.display(description="projects", ordering="_projects")
    def project_count(self, obj):
        return obj._projects

    @admin.display(description="members", ordering="_members")
    def member_count(self, obj):
        return obj._members


class OwnerFixedAdmin(admin.ModelAdmin):
    """An admin whose ``owner_fields`` are chosen when an object is added and read-only after:
    organizations own projects (and memberships), projects own keys, so changing an owner would
    move an object, its keys, usage and limits to another tenant, which no API of the platform
    (nor OpenAI's) does."""

    owner_fields: tuple[str, ...] = ()

    def get_readonly_fields(self, request, obj=None):
        fields = tuple(super().get_readonly_fields(request, obj))
        return fields if obj is None else fields + tuple(f for f in self.owner_fields if f not in fields)


@admin.register(Project)
class ProjectAdmin(OwnerFixedAdmin):
    list_display = ("name", "organization", "public_id", "created_at", "archived_at")
    list_filter = ("organization", ("archived_at", admin.EmptyFieldListFilter))
    search_fields = ("name", "public_id", "organization__name")
    readonly_fields = ("public_id", "created_at")
    list_select_related = ("organization",)
    autocomplete_fields = ("organization",)
    owner_fields = ("organization",)


class KeyStatusFilter(admin.SimpleListFilter):
    """Active / revoked / expired, as `APIKey.is_active` decides."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("revoked", "Revoked"), ("expired", "Expired")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "active":
            return queryset.filter(Q(revoked_at__isnull=True) & (Q(expires_at__isnull=True) | Q(expires_at__gt=now)))
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        return queryset


class APIKeyAddForm(forms.Form):
    project = forms.ModelChoiceField(queryset=Project.objects.select_related("organization")
                                     .filter(archived_at__isnull=True))
    name = forms.CharField(max_length=200)
    expires_at = forms.DateTimeField(required=False, help_text="Optional, UTC (YYYY-MM-DD HH:MM).")

    def clean_expires_at(self):
        value = self.cleaned_data.get("expires_at")
        if value is not None and value <= timezone.now():
            raise forms.ValidationError("Pick a time in the future.")
        return value


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    """Keys are shown masked; the hash is never displayed; revoke with the action."""

    list_display = ("name", "masked", "project", "organization", "created_by", "created_at", "last_used_at",
                    "expires_at", "revoked_at")
    list_filter = (KeyStatusFilter, "project__organization", "project")
    list_select_related = ("project__organization", "created_by")
    search_fields = ("name", "public_id", "project__name", "project__organization__name", "last4")
    fields = ("public_id", "name", "project", "masked", "created_by", "service_account", "created_at", "last_used_at",
              "expires_at", "revoked_at", "allowed_models")
    readonly_fields = ("public_id", "project", "masked", "created_by", "service_account", "created_at", "last_used_at",
                       "revoked_at")
    actions = ["revoke_keys"]

    @admin.display(description="organization", ordering="project__organization__name")
    def organization(self, obj):
        return obj.project.organization

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke_keys(self, request, queryset):
        revoke_selected(self, request, queryset, lambda key: api_key_revoke(api_key=key), "key(s)")

    @method_decorator(never_cache)
    def add_view(self, request, form_url="", extra_context=None):
        """Create a key with `api_key_create` and show its plaintext once (never stored)."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = APIKeyAddForm(request.POST or None)
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "title": "Add API key",
                   "form": form}
        if request.method == "POST" and form.is_valid():
            created = api_key_create(project=form.cleaned_data["project"], name=form.cleaned_data["name"],
                                     expires_at=form.cleaned_data["expires_at"], created_by=request.user)
            self.log_addition(request, created.api_key, [{"added": {}}])
            context.update(title="API key created", created=created)
            return TemplateResponse(request, "admin/accounts/apikey/created.html", context)
        return TemplateResponse(request, "admin/accounts/apikey/add.html", context,
                                status=400 if request.method == "POST" else 200)


@admin.register(Membership)
class MembershipAdmin(OwnerFixedAdmin):
    list_display = ("user", "organization", "role", "created_at")
    list_filter = ("role", "organization")
    search_fields = ("user__username", "user__email", "organization__name")
    list_select_related = ("user", "organization")
    autocomplete_fields = ("user", "organization")
    owner_fields = ("user", "organization")  # a change of role stays editable


@admin.register(AdminAPIKey)
class AdminAPIKeyAdmin(admin.ModelAdmin):
    """Organization admin keys (``sk-admin-``), shown masked; the hash is never displayed."""

    list_display = ("name", "masked", "organization", "created_at", "last_used_at", "expires_at", "revoked_at")
    list_filter = ("organization",)
    search_fields = ("name", "public_id", "organization__name")
    fields = ("public_id", "name", "organization", "masked", "created_at", "last_used_at", "expires_at",
              "revoked_at")
    readonly_fields = ("public_id", "organization", "masked", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke_keys"]

    def has_add_permission(self, request):
        return False  # created with `create_api_key --admin` or the console (plaintext shown once)

    @admin.action(description="Revoke selected admin keys", permissions=["change"])
    def revoke_keys(self, request, queryset):
        revoke_selected(self, request, queryset, lambda key: admin_api_key_revoke(admin_api_key=key),
                        "admin key(s)")


@admin.register(ServiceAccount)
class ServiceAccountAdmin(admin.ModelAdmin):
    """Project service accounts (created with their key by the Admin API; deleting one here leaves
    its keys working: revoke them first, or delete it through the Admin API, which does)."""

    list_display = ("name", "public_id", "project", "role", "created_at")
    list_filter = ("project__organization",)
    search_fields = ("name", "public_id", "project__name", "project__public_id")
    readonly_fields = ("public_id", "project", "role", "created_at")
    list_select_related = ("project__organization",)

    def has_add_permission(self, request):
        return False  # created by the Admin API with its key (plaintext returned once)


@admin.register(AuditLog)
class AuditLogAdmin(admin.ModelAdmin):
    """The audit log, read-only: entries are written by `accounts.audit` and never changed."""

    list_display = ("effective_at", "organization", "type", "resource_id", "project_name", "actor_id")
    list_filter = ("type", "organization")
    search_fields = ("resource_id", "actor_id", "actor_email", "project_public_id", "organization__name")
    list_select_related = ("organization",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # Entries go only with their organization: deleting it asks this for the cascade; the audit log's
        # own pages (list, entry, delete) never may.
        match = request.resolver_match
        if match is None or (match.url_name or "").startswith("accounts_auditlog_"):
            return False
        return super().has_delete_permission(request, obj)
