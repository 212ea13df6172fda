"""The tenant console's pages for organizations, projects, API keys and members.

Every page of an organization subclasses `accounts.console.OrganizationView` (tenant
scoping and the 404 for other tenants' objects live there); role rules come from
`accounts.roles` and are enforced here, server-side, with 403. Writes go through
`accounts.services`, reads through `accounts.selectors`.
"""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import get_user_model, login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.utils.http import urlencode
from django.views.decorators.cache import never_cache
from django.views.generic import TemplateView

from accounts import invitations, roles, selectors, services
from config.exceptions import InvalidInput
from embeddings.selectors import embedding_models_active
from embeddings.services import allowed_models_normalize

from .base import SESSION_ORGANIZATION, OrganizationView, limit_bars
from .forms import (APIKeyCreateForm, InvitationCreateForm, InvitationSignUpForm, MemberRoleForm, ModelAccessForm,
                    ProjectCreateForm)


class SignInView(auth_views.LoginView):
    """``/console/login/``: Django's sign-in (throttled by django-axes, see settings).

    On a fresh install (no user at all) the page shows how to create the first one.
    """

    template_name = "console/login.html"
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["first_run"] = not get_user_model().objects.exists()
        return context


class SignOutView(auth_views.LogoutView):
    """``/console/logout/`` (POST, as Django requires)."""


@login_required
def console_home(request):
    """``/console/``: the organization named by ``?org=`` (the switcher), else the last
    one used, else the first; a page explaining what to do when the user has none."""
    organizations = list(selectors.organizations_for_user(user=request.user))
    wanted = request.GET.get("org") or request.session.get(SESSION_ORGANIZATION)
    if request.GET.get("org") and not any(o.public_id == wanted for o in organizations):
        raise Http404("No such organization.")
    for organization in organizations:
        if organization.public_id == wanted:
            return redirect("console:projects", org=organization.public_id)
    if organizations:
        return redirect("console:projects", org=organizations[0].public_id)
    return render(request, "console/no_organization.html", {"organizations": []})


class ProjectListView(OrganizationView):
    """``/console/orgs/<org>/``: the organization's projects; owners and admins create them (POST)."""

    template_name = "console/projects.html"
    nav = "projects"

    def get_context_data(self, form=None, **kwargs):
        context = super().get_context_data(**kwargs)
        context["projects"] = selectors.projects_for_organization(organization=self.organization)
        context["form"] = form or ProjectCreateForm()
        context["limit_bars"] = limit_bars(organization=self.organization)
        return context

    def post(self, request, *args, **kwargs):
        self.require(roles.can_manage_projects(self.role))
        form = ProjectCreateForm(request.POST)
        if form.is_valid():
            try:
                project = services.project_create(organization=self.organization, name=form.cleaned_data["name"])
            except ValidationError as exc:
                form.add_error("name", exc)
            else:
                messages.success(request, f"Project '{project.name}' created.")
                return redirect("console:keys", org=self.organization.public_id, project=project.public_id)
        return self.render_to_response(self.get_context_data(form=form), status=400)


@method_decorator(never_cache, name="dispatch")
class APIKeyListView(OrganizationView):
    """``/console/orgs/<org>/projects/<project>/keys/``: the project's keys (masked, last used,
    expiry, status). POST creates one and answers with the plaintext, shown this once
    (the response is not cached and the plaintext is stored nowhere)."""

    template_name = "console/keys.html"
    nav = "projects"

    def get_context_data(self, form=None, **kwargs):
        context = super().get_context_data(**kwargs)
        project = self.project(self.kwargs["project"])
        keys = list(selectors.api_keys_for_project(project=project))
        for key in keys:
            key.can_revoke = key.revoked_at is None and roles.can_revoke_key(self.role, api_key=key,
                                                                             user=self.request.user)
        context.update(project=project, keys=keys, form=form or APIKeyCreateForm())
        return context

    def post(self, request, *args, **kwargs):
        project = self.project(self.kwargs["project"])
        self.require(roles.can_create_keys(self.role))
        form = APIKeyCreateForm(request.POST)
        if not form.is_valid():
            return self.render_to_response(self.get_context_data(form=form), status=400)
        created = services.api_key_create(project=project, name=form.cleaned_data["name"],
                                          expires_at=form.expires_at, created_by=request.user)
        context = OrganizationView.get_context_data(self, project=project, created=created)
        return render(request, "console/key_created.html", context, status=201)


class APIKeyRevokeView(OrganizationView):
    """``.../keys/<key>/revoke/``: GET asks for confirmation, POST revokes (effective at once
    with a shared cache: `accounts.services.api_key_revoke`)."""

    template_name = "console/key_revoke.html"
    nav = "projects"

    def _key(self):
        project = self.project(self.kwargs["project"])
        key = self.api_key(project, self.kwargs["key"])
        self.require(roles.can_revoke_key(self.role, api_key=key, user=self.request.user))
        return project, key

    def get(self, request, *args, **kwargs):
        project, key = self._key()
        return self.render_to_response(self.get_context_data(project=project, key=key))

    def post(self, request, *args, **kwargs):
        project, key = self._key()
        services.api_key_revoke(api_key=key)
        messages.success(request, f"Key '{key.name or key.public_id}' ({key.masked}) revoked.")
        return redirect("console:keys", org=self.organization.public_id, project=project.public_id)


class ModelAccessView(OrganizationView):
    """``.../projects/<project>/models/`` and ``.../keys/<key>/models/``: which models the project's
    keys, or one key (within its project's), may use; none ticked = every model. Owners and admins
    (`accounts.roles.can_manage_model_access`); applies to the next request."""

    template_name = "console/model_access.html"
    nav = "projects"

    def _target(self):
        self.require(roles.can_manage_model_access(self.role))
        project = self.project(self.kwargs["project"])
        key = self.api_key(project, self.kwargs["key"]) if "key" in self.kwargs else None
        return project, key

    def get_context_data(self, form=None, **kwargs):
        project, key = self._target()
        names = [m.name for m in embedding_models_active()]
        current = (key or project).allowed_models
        context = super().get_context_data(**kwargs)
        context.update(project=project, key=key, form=form or ModelAccessForm(names=names,
                                                                            initial={"models": current}),
                       unknown=[name for name in current if name not in names])
        return context

    def post(self, request, *args, **kwargs):
        project, key = self._target()
        form = ModelAccessForm(request.POST, names=[m.name for m in embedding_models_active()])
        if not form.is_valid():
            return self.render_to_response(self.get_context_data(form=form), status=400)
        try:
            models = allowed_models_normalize(form.cleaned_data["models"])
        except InvalidInput as exc:  # a model deactivated since the page was drawn
            form.add_error("models", exc.message)
            return self.render_to_response(self.get_context_data(form=form), status=400)
        if key is None:
            services.project_allowed_models_set(project=project, models=models)
        else:
            services.api_key_allowed_models_set(api_key=key, models=models)
        what = f"Key '{key.name or key.public_id}'" if key else f"Project '{project.name}'"
        messages.success(request, f"{what} may use: {', '.join(models) if models else 'every model'}.")
        return redirect("console:keys", org=self.organization.public_id, project=project.public_id)


class AuditLogView(OrganizationView):
    """``/console/orgs/<org>/audit-log/``: the organization's audit log, newest first, 100 a page
    (``?before=<entry id>`` for older ones), filtered by ``?type=`` and ``?project=``; the same
    entries as ``GET /v1/organization/audit_logs``. Owners and admins only."""

    template_name = "console/audit_log.html"
    nav = "audit-log"
    PAGE = 100

    def get_context_data(self, **kwargs):
        self.require(roles.can_view_audit_log(self.role))
        context = super().get_context_data(**kwargs)
        params = self.request.GET
        entries = selectors.audit_logs_for_organization(
            organization_id=self.organization.pk,
            event_types=[params["type"]] if params.get("type") else None,
            project_ids=[params["project"]] if params.get("project") else None)
        if params.get("before"):
            pivot = entries.filter(public_id=params["before"]).values_list("pk", flat=True).first()
            entries = entries.filter(pk__lt=pivot) if pivot else entries
        page = list(entries[:self.PAGE + 1])
        context.update(entries=page[:self.PAGE],
                       older=page[self.PAGE - 1].public_id if len(page) > self.PAGE else None,
                       type=params.get("type", ""), project=params.get("project", ""))
        return context


@method_decorator(never_cache, name="dispatch")
class MemberListView(OrganizationView):
    """``/console/orgs/<org>/members/``: members and roles, and the pending invitations.

    Owners and admins invite by e-mail (POST): the answer is the same whether the address has
    an account or not (201, the accept link shown this once with a copy button, and mailed).
    Nobody is added without accepting (`accounts.invitations`).
    """

    template_name = "console/members.html"
    nav = "members"

    def get_context_data(self, form=None, **kwargs):
        context = super().get_context_data(**kwargs)
        assignable = roles.assignable_roles(self.role)
        members = list(selectors.memberships_for_organization(organization=self.organization))
        for member in members:
            member.manageable = member.role in assignable
            if member.manageable:
                member.role_form = MemberRoleForm(initial={"role": member.role}, roles=assignable,
                                                  prefix=member.user.username)
        pending = []
        if roles.can_manage_members(self.role):
            pending = list(invitations.invitations_pending(organization=self.organization))
            for invitation in pending:
                invitation.revocable = invitation.role in assignable
        context.update(members=members, invitations=pending,
                       form=form or InvitationCreateForm(roles=assignable or ["reader"]))
        return context

    def post(self, request, *args, **kwargs):
        self.require(roles.can_manage_members(self.role))
        form = InvitationCreateForm(request.POST, roles=roles.assignable_roles(self.role))
        if not form.is_valid():
            return self.render_to_response(self.get_context_data(form=form), status=400)
        try:
            created = invitations.invitation_create(organization=self.organization, email=form.cleaned_data["email"],
                                                    role=form.cleaned_data["role"], invited_by=request.user)
        except ValidationError as exc:
            form.add_error("email", exc)
            return self.render_to_response(self.get_context_data(form=form), status=400)
        accept_url = request.build_absolute_uri(reverse("console:invitation-accept", kwargs={"token": created.token}))
        sent = invitations.invitation_send(invitation=created.invitation, accept_url=accept_url)
        context = self.get_context_data(created=created.invitation, accept_url=accept_url, sent=sent)
        return self.render_to_response(context, status=201)


class InvitationRevokeView(OrganizationView):
    """``.../members/invitations/<invitation>/revoke/``: POST withdraws a pending invitation
    (owners and admins, for roles they may grant); its link stops working at once."""

    http_method_names = ["post"]

    def post(self, request, *args, **kwargs):
        invitation = invitations.invitation_get(organization=self.organization, public_id=self.kwargs["invitation"])
        self.require(roles.can_manage_members(self.role)
                     and invitation.role in roles.assignable_roles(self.role))
        invitations.invitation_revoke(invitation=invitation)
        messages.success(request, f"Invitation of {invitation.email} withdrawn.")
        return redirect("console:members", org=self.organization.public_id)


@method_decorator(never_cache, name="dispatch")
class InvitationAcceptView(TemplateView):
    """``/console/invitations/<token>/``: GET shows the invitation; POST accepts it.

    Signed in with the invited address: POST joins the organization with the invited role (with
    another address: 403, the link stays usable). Signed out: the page links to
    the sign-in (which comes back here) and offers an account for the invited address
    (``action=signup``), created, signed in and joined in one POST. An unknown link answers 404;
    a used, withdrawn or expired one 410 with the reason.
    """

    template_name = "console/invitation.html"

    def dispatch(self, request, *args, **kwargs):
        self.invitation = invitations.invitation_get_by_token(token=kwargs["token"])
        refusal = invitations.invitation_refusal(self.invitation)
        if refusal:
            return self.render_to_response({"refusal": refusal}, status=404 if self.invitation is None else 410)
        return super().dispatch(request, *args, **kwargs)

    def get_context_data(self, signup_form=None, **kwargs):
        context = super().get_context_data(**kwargs)
        user = self.request.user
        context.update(invitation=self.invitation,
                       for_user=user.is_authenticated and invitations.invitation_for_user(self.invitation, user),
                       other_address=invitations.OTHER_ADDRESS,
                       signup_form=signup_form or InvitationSignUpForm(email=self.invitation.email),
                       login_url=f"{reverse('console:login')}?{urlencode({'next': self.request.path})}")
        return context

    def post(self, request, *args, **kwargs):
        if not request.user.is_authenticated:
            if request.POST.get("action") != "signup":
                return redirect(self.get_context_data()["login_url"])
            form = InvitationSignUpForm(request.POST, email=self.invitation.email)
            if not form.is_valid():
                return self.render_to_response(self.get_context_data(signup_form=form), status=400)
            with transaction.atomic():
                user = form.save()
                membership = self._accept(user)
            if membership is not None:
                login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        else:
            if not invitations.invitation_for_user(self.invitation, request.user):
                return self.render_to_response({**self.get_context_data(), "refusal": invitations.OTHER_ADDRESS},
                                               status=403)
            with transaction.atomic():
                membership = self._accept(request.user)
        if membership is None:
            return self.render_to_response({"refusal": invitations.invitation_refusal(self.invitation)}, status=410)
        messages.success(request, f"You are now a member of {membership.organization.name} "
                                  f"({membership.get_role_display()}).")
        return redirect("console:projects", org=membership.organization.public_id)

    def _accept(self, user):
        """The new membership, or None (and the invitation re-read) when the link was used meanwhile."""
        try:
            return invitations.invitation_accept(invitation=self.invitation, user=user)
        except ValidationError:
            transaction.set_rollback(True)  # no account is left behind by a refused sign-up
            self.invitation.refresh_from_db()
            return None


class MemberUpdateView(OrganizationView):
    """``.../members/<username>/``: POST changes the role (only roles the actor may grant,
    of a member whose current role the actor may take away; the last owner stays)."""

    http_method_names = ["post"]

    def post(self, request, *args, **kwargs):
        membership = selectors.membership_get(organization=self.organization, username=self.kwargs["username"])
        assignable = roles.assignable_roles(self.role)
        self.require(roles.can_manage_members(self.role) and membership.role in assignable)
        form = MemberRoleForm(request.POST, roles=assignable, prefix=membership.user.username)
        if not form.is_valid():
            messages.error(request, "Choose one of the roles offered.")
        else:
            try:
                services.membership_set_role(membership=membership, role=form.cleaned_data["role"])
            except ValidationError as exc:
                messages.error(request, exc.messages[0])
            else:
                messages.success(request, f"{membership.user.get_username()} is now {membership.get_role_display()}.")
        return redirect("console:members", org=self.organization.public_id)


class MemberRemoveView(OrganizationView):
    """``.../members/<username>/remove/``: GET asks for confirmation, POST removes."""

    template_name = "console/member_remove.html"
    nav = "members"

    def _membership(self):
        membership = selectors.membership_get(organization=self.organization, username=self.kwargs["username"])
        self.require(roles.can_manage_members(self.role) and membership.role in roles.assignable_roles(self.role))
        return membership

    def get(self, request, *args, **kwargs):
        return self.render_to_response(self.get_context_data(member=self._membership()))

    def post(self, request, *args, **kwargs):
        membership = self._membership()
        try:
            services.membership_remove(membership=membership)
        except ValidationError as exc:
            messages.error(request, exc.messages[0])
            return redirect("console:members", org=self.organization.public_id)
        messages.success(request, f"{membership.user.get_username()} removed.")
        if membership.user_id == request.user.pk:
            return redirect(reverse("console:home"))
        return redirect("console:members", org=self.organization.public_id)


@method_decorator(never_cache, name="dispatch")
class AdminAPIKeyListView(OrganizationView):
    """``/console/orgs/<org>/admin-keys/``: the organization's admin keys (``sk-admin-...``, for
    ``/v1/organization/usage/embeddings`` and ``/v1/organization/costs``), masked, with last use,
    expiry and status. POST creates one and answers with the plaintext, shown this once (not
    cached, stored nowhere). Owners and admins only (`accounts.roles.can_manage_admin_keys`):
    an admin key reads all of the organization's usage and costs, so others get 403."""

    template_name = "console/admin_keys.html"
    nav = "admin-keys"

    def get(self, request, *args, **kwargs):
        self.require(roles.can_manage_admin_keys(self.role))
        return super().get(request, *args, **kwargs)

    def get_context_data(self, form=None, **kwargs):
        context = super().get_context_data(**kwargs)
        keys = selectors.admin_api_keys_for_organization(organization=self.organization)
        context.update(keys=keys, form=form or APIKeyCreateForm())
        return context

    def post(self, request, *args, **kwargs):
        self.require(roles.can_manage_admin_keys(self.role))
        form = APIKeyCreateForm(request.POST)
        if not form.is_valid():
            return self.render_to_response(self.get_context_data(form=form), status=400)
        created = services.admin_api_key_create(organization=self.organization, name=form.cleaned_data["name"],
                                                expires_at=form.expires_at, created_by=request.user)
        context = OrganizationView.get_context_data(self, created=created)
        return render(request, "console/admin_key_created.html", context, status=201)


class AdminAPIKeyRevokeView(OrganizationView):
    """``.../admin-keys/<key>/revoke/``: GET asks for confirmation, POST revokes (effective at
    once with a shared cache: `accounts.services.admin_api_key_revoke`). Owners and admins only."""

    template_name = "console/admin_key_revoke.html"
    nav = "admin-keys"

    def _key(self):
        self.require(roles.can_manage_admin_keys(self.role))
        return self.admin_api_key(self.kwargs["key"])

    def get(self, request, *args, **kwargs):
        return self.render_to_response(self.get_context_data(key=self._key()))

    def post(self, request, *args, **kwargs):
        key = self._key()
        services.admin_api_key_revoke(admin_api_key=key)
        messages.success(request, f"Admin key '{key.name or key.public_id}' ({key.masked}) revoked.")
        return redirect("console:admin-keys", org=self.organization.public_id)
