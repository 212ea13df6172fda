"""Tenant scoping for the web console: ONE base view that every organization page uses.

Every console URL below ``/console/orgs/<org>/`` is served by a subclass of
`OrganizationView` (a test walks the URL conf and fails on any that is not), so a
page cannot forget the scoping: ``dispatch`` signs the user in or redirects,
resolves ``<org>`` (a public id) through the *user's own memberships* and answers
404 when the user is not a member; every object is then looked up inside
``self.organization`` (`project`, `api_key`, `admin_api_key`), so another tenant's object is a 404
too (PostHog's ``TeamAndOrgViewSetMixin`` is the model). Role rules are checked
server-side with `require`, which answers 403.
"""
from __future__ import annotations

from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import PermissionDenied
from django.views.generic import TemplateView

from accounts import roles
from accounts.models import AdminAPIKey, APIKey, Membership, Organization, Project
from accounts.selectors import (admin_api_key_get, api_key_get, membership_get_for_user, organizations_for_user,
                                project_get)
from limits.usage import LimitUsage, limits_usage_summary

SESSION_ORGANIZATION = "console_organization"


class OrganizationView(LoginRequiredMixin, TemplateView):
    """Base of every console page of one organization (URL kwarg ``org``: its public id).

    Sets ``self.membership``, ``self.organization`` and ``self.role`` before the
    handler runs; anonymous users are redirected to the sign-in page, non-members
    get 404. The template context carries them plus ``organizations`` (for the
    organization switcher) and ``perms_console`` (what the role may do).
    """

    membership: Membership
    organization: Organization
    role: str
    nav = ""  # which navigation entry is highlighted

    def dispatch(self, request, *args, **kwargs):
        if not request.user.is_authenticated:
            return self.handle_no_permission()
        self.membership = membership_get_for_user(user=request.user, organization_public_id=kwargs.pop("org"))
        self.organization = self.membership.organization
        self.role = self.membership.role
        if request.session.get(SESSION_ORGANIZATION) != self.organization.public_id:
            request.session[SESSION_ORGANIZATION] = self.organization.public_id  # saves the session: once
        return super().dispatch(request, *args, **kwargs)

    # Lookups, always inside this organization (404 outside it).
    def project(self, public_id: str) -> Project:
        return project_get(organization=self.organization, public_id=public_id)

    def api_key(self, project: Project, public_id: str) -> APIKey:
        return api_key_get(project=project, public_id=public_id)

    def admin_api_key(self, public_id: str) -> AdminAPIKey:
        return admin_api_key_get(organization=self.organization, public_id=public_id)

    @staticmethod
    def require(allowed: bool) -> None:
        """403 unless ``allowed`` (a rule from `accounts.roles`)."""
        if not allowed:
            raise PermissionDenied("Your role in this organization does not allow this.")

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context.update(
            organization=self.organization,
            membership=self.membership,
            role=self.role,
            organizations=organizations_for_user(user=self.request.user),
            nav=self.nav,
            perms_console={
                "manage_projects": roles.can_manage_projects(self.role),
                "create_keys": roles.can_create_keys(self.role),
                "manage_members": roles.can_manage_members(self.role),
                "admin_keys": roles.can_manage_admin_keys(self.role),
                "billing": roles.can_view_billing(self.role),
                "model_access": roles.can_manage_model_access(self.role),
                "audit_log": roles.can_view_audit_log(self.role),
            },
        )
        return context


_LIMIT_KINDS = {
    # kind: (what it limits, unit, period)
    "monthly_tokens": ("Monthly tokens", "tokens", "this month"),
    # RPM/TPM are token buckets that drain continuously: "used" is the bucket's level now.
    "rpm": ("Requests per minute", "requests", "per minute, now"),
    "tpm": ("Tokens per minute", "tokens", "per minute, now"),
}


def limit_bar(usage: LimitUsage) -> dict:
    """One `LimitUsage` as the plain dict ``console/_limit_bar.html`` draws
    (``label``, ``used``, ``limit`` or None, ``unit``, ``period``, ``resets_at``)."""
    what, unit, period = _LIMIT_KINDS[usage.kind]
    scope = {"organization": "Organization", "project": "Project", "key": "Key"}[usage.scope]
    return {"label": f"{what} · {scope} {usage.scope_name}", "used": usage.used, "limit": usage.limit,
            "unit": unit, "period": period, "resets_at": usage.resets_at}


def limit_bars(*, organization: Organization, project: Project | None = None) -> list[dict]:
    """The quota and rate-limit bars of ``organization`` (and ``project`` and its keys):
    every limit that is set, plus this month's tokens even when unlimited ("12.3M tokens
    this month · no limit"). Reads `limits.usage.limits_usage_summary`."""
    return [limit_bar(usage) for usage in limits_usage_summary(organization=organization, project=project)
            if usage.limit is not None or usage.kind == "monthly_tokens"]
