"""OpenAI's Admin API for an organization's admin keys (``sk-admin-...``): projects, their API
keys, service accounts, model permissions and rate limits, and the audit log.

Every view subclasses `AdminAPIView`: admin keys only (a project key gets 403
``admin_key_required``), and every object is looked up inside the key's organization, so another
organization's project, key or service account is a 404 like a missing one. Writes go through
the services of `accounts` and `limits` (so the audit log, `accounts.signals`, records them as it
records the console's, the Django admin's and the commands'); the objects are built in
`administration.serializers`.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors as account_selectors
from accounts import services as account_services
from accounts.authentication import AdminAPIKeyAuthentication
from accounts.models import APIKey, Membership, Organization, Project, ServiceAccount
from config.errors import InvalidRequestError, NotFoundError
from config.exceptions import InvalidInput
from config.lists import list_object
from config.schema import error_responses
from embeddings.selectors import embedding_model_get, embedding_models_active
from embeddings.services import allowed_models_normalize
from limits.models import Limit
from limits.services import UNSET, limit_set

from . import serializers as s

ERRORS = error_responses(400, 401, 403, 404)
PROJECT_ID = OpenApiParameter("project_id", str, OpenApiParameter.PATH, description="`proj_...`")


def _cursor(rows, param: str, value: str):
    """The primary key of the row ``value`` (a public id) among ``rows``; 400 naming ``param`` otherwise."""
    pk = rows.filter(public_id=value).values_list("pk", flat=True).first()
    if pk is None:
        raise InvalidRequestError(f"Invalid value for '{param}': no object '{value}' in this list.", param=param,
                                  code="invalid_value")
    return pk


def page_of(rows: QuerySet, query: dict, *, newest_first: bool = False) -> tuple[list, bool]:
    """One page of ``rows`` (a queryset of objects with ``public_id``), in creation order (or newest
    first): ``query["limit"]`` of them after ``query["after"]`` or before ``query["before"]`` (ids).
    Returns ``(rows, has_more)``."""
    limit, after, before = query["limit"], query.get("after"), query.get("before")
    later, earlier = ("pk__lt", "pk__gt") if newest_first else ("pk__gt", "pk__lt")
    if after:
        rows = rows.filter(**{later: _cursor(rows, "after", after)})
    if before:  # the `limit` rows nearest before the cursor, in listing order
        rows = rows.filter(**{earlier: _cursor(rows, "before", before)})
        found = list(rows.order_by("pk" if newest_first else "-pk")[:limit + 1])
        return list(reversed(found[:limit])), len(found) > limit
    found = list(rows.order_by("-pk" if newest_first else "pk")[:limit + 1])
    return found[:limit], len(found) > limit


class AdminAPIView(APIView):
    """Base of every Admin API view: admin keys only, scoped to the key's organization."""

    authentication_classes = [AdminAPIKeyAuthentication]

    @property
    def organization_id(self) -> int:
        return self.request.auth.organization_id

    def query(self, serializer_class) -> dict:
        serializer = serializer_class(data=self.request.query_params)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def body(self, serializer_class, unsupported: tuple[str, ...] = ()) -> dict:
        """The validated body; OpenAI's fields that have no counterpart here are refused (400
        ``unsupported_parameter``), and any other field the serializer does not know (400
        ``unknown_parameter``, as ``POST /v1/embeddings`` refuses one): never ignored."""
        data = self.request.data
        serializer = serializer_class(data=data)
        if isinstance(data, dict):
            for name in unsupported:
                if data.get(name) is not None:
                    raise InvalidRequestError(f"'{name}' is not supported by this platform.", param=name,
                                              code="unsupported_parameter")
            for name in data:
                if name not in serializer.fields and name not in unsupported:
                    raise InvalidRequestError(f"Unrecognized request argument supplied: {name}", param=name,
                                              code="unknown_parameter")
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def project(self, project_id: str) -> Project:
        """The project ``project_id`` of the key's organization; 404 otherwise."""
        project = Project.objects.filter(organization_id=self.organization_id, public_id=project_id).first()
        if project is None:
            raise NotFoundError(f"No project with id '{project_id}' in this organization.", code="not_found")
        return project

    def api_key(self, project: Project, key_id: str) -> APIKey:
        """The unrevoked key ``key_id`` of ``project``; 404 otherwise (a deleted key is revoked)."""
        key = (project.api_keys.select_related("created_by", "service_account")
               .filter(public_id=key_id, revoked_at__isnull=True).first())
        if key is None:
            raise NotFoundError(f"No API key with id '{key_id}' in project '{project.public_id}'.", code="not_found")
        return key

    def service_account(self, project: Project, account_id: str) -> ServiceAccount:
        account = project.service_accounts.filter(public_id=account_id).first()
        if account is None:
            raise NotFoundError(f"No service account with id '{account_id}' in project '{project.public_id}'.",
                                code="not_found")
        return account

    def roles(self, keys) -> dict[int, str]:
        """user pk -> role in the organization, for the owners of ``keys``."""
        users = {k.created_by_id for k in keys if k.created_by_id}
        return dict(Membership.objects.filter(organization_id=self.organization_id, user_id__in=users)
                    .values_list("user_id", "role"))


# --- Projects -------------------------------------------------------------------------------------


class ProjectListView(AdminAPIView):
    """``/v1/organization/projects``: list (creation order; archived ones with ``include_archived``), create."""

    @extend_schema(parameters=[s.ProjectListQuerySerializer], responses={200: s.ProjectListSerializer, **ERRORS},
                   summary="List projects", operation_id="list-projects")
    def get(self, request):
        query = self.query(s.ProjectListQuerySerializer)
        rows = Project.objects.filter(organization_id=self.organization_id)
        if not query["include_archived"]:
            rows = rows.filter(archived_at__isnull=True)
        projects, has_more = page_of(rows, query)
        return Response(list_object([s.project_object(p) for p in projects], has_more))

    @extend_schema(request=s.ProjectCreateSerializer, responses={200: s.ProjectSerializer, **ERRORS},
                   summary="Create a project", operation_id="create-project")
    def post(self, request):
        body = self.body(s.ProjectCreateSerializer, s.UNSUPPORTED["project"])
        try:
            project = account_services.project_create(
                organization=Organization.objects.get(pk=self.organization_id), name=body["name"])
        except DjangoValidationError as exc:
            raise InvalidRequestError(exc.messages[0], param="name", code="duplicate_name") from None
        return Response(s.project_object(project))


class ProjectDetailView(AdminAPIView):
    """``/v1/organization/projects/{project_id}``: retrieve, modify (the name)."""

    @extend_schema(parameters=[PROJECT_ID], responses={200: s.ProjectSerializer, **ERRORS},
                   summary="Retrieve a project", operation_id="retrieve-project")
    def get(self, request, project_id: str):
        return Response(s.project_object(self.project(project_id)))

    @extend_schema(parameters=[PROJECT_ID], request=s.ProjectUpdateSerializer,
                   responses={200: s.ProjectSerializer, **ERRORS}, summary="Modify a project",
                   operation_id="modify-project")
    def post(self, request, project_id: str):
        project = self.project(project_id)
        body = self.body(s.ProjectUpdateSerializer, s.UNSUPPORTED["project"])
        try:
            account_services.project_rename(project=project, name=body["name"])
        except DjangoValidationError as exc:
            raise InvalidRequestError(exc.messages[0], param="name", code="duplicate_name") from None
        return Response(s.project_object(project))


class ProjectArchiveView(AdminAPIView):
    """``POST /v1/organization/projects/{project_id}/archive``: its keys stop working at once."""

    @extend_schema(parameters=[PROJECT_ID], request=None, responses={200: s.ProjectSerializer, **ERRORS},
                   summary="Archive a project", operation_id="archive-project")
    def post(self, request, project_id: str):
        return Response(s.project_object(account_services.project_archive(project=self.project(project_id))))


class ModelPermissionsView(AdminAPIView):
    """``/v1/organization/projects/{project_id}/model_permissions``: the project's model allowlist
    (empty: every model), as OpenAI's project model permissions."""

    @extend_schema(parameters=[PROJECT_ID], responses={200: s.ModelPermissionsSerializer, **ERRORS},
                   summary="Retrieve a project's model permissions",
                   operation_id="retrieve-project-model-permissions")
    def get(self, request, project_id: str):
        return Response(s.model_permissions_object(self.project(project_id)))

    @extend_schema(parameters=[PROJECT_ID], request=s.ModelPermissionsUpdateSerializer,
                   responses={200: s.ModelPermissionsSerializer, **ERRORS},
                   summary="Set a project's model permissions", operation_id="update-project-model-permissions",
                   description="`allow_list` with the models the project's keys may use (others get 403 "
                               "`model_not_allowed`), or `deny_list` with none: every model.")
    def post(self, request, project_id: str):
        project = self.project(project_id)
        body = self.body(s.ModelPermissionsUpdateSerializer)
        models = _normalized(body["model_ids"], "model_ids")
        account_services.project_allowed_models_set(project=project, models=models)
        return Response(s.model_permissions_object(project))

    @extend_schema(parameters=[PROJECT_ID], responses={200: s.ModelPermissionsDeletedSerializer, **ERRORS},
                   summary="Delete a project's model permissions (allow every model)",
                   operation_id="delete-project-model-permissions")
    def delete(self, request, project_id: str):
        account_services.project_allowed_models_set(project=self.project(project_id), models=[])
        return Response({"object": "project.model_permissions.deleted", "deleted": True})


def _normalized(names: list[str], param: str) -> list[str]:
    """`allowed_models_normalize`, its 400 naming ``param``."""
    try:
        return allowed_models_normalize(names)
    except InvalidInput as exc:
        exc.param = param
        raise


# --- Project API keys -----------------------------------------------------------------------------

KEY_ID = OpenApiParameter("key_id", str, OpenApiParameter.PATH, description="`key_...`")


class ProjectAPIKeyListView(AdminAPIView):
    """``GET /v1/organization/projects/{project_id}/api_keys``: the project's keys (revoked ones are gone)."""

    @extend_schema(parameters=[PROJECT_ID, s.ListQuerySerializer], responses={200: s.APIKeyListSerializer, **ERRORS},
                   summary="List project API keys", operation_id="list-project-api-keys")
    def get(self, request, project_id: str):
        project = self.project(project_id)
        rows = project.api_keys.filter(revoked_at__isnull=True).select_related("created_by", "service_account")
        keys, has_more = page_of(rows, self.query(s.ListQuerySerializer))
        roles = self.roles(keys)
        return Response(list_object([s.api_key_object(k, roles) for k in keys], has_more))


class ProjectAPIKeyDetailView(AdminAPIView):
    """``/v1/organization/projects/{project_id}/api_keys/{key_id}``: retrieve, update (expiry and the
    key's model allowlist), delete (the key is revoked at once)."""

    @extend_schema(parameters=[PROJECT_ID, KEY_ID], responses={200: s.ProjectAPIKeySerializer, **ERRORS},
                   summary="Retrieve a project API key", operation_id="retrieve-project-api-key")
    def get(self, request, project_id: str, key_id: str):
        key = self.api_key(self.project(project_id), key_id)
        return Response(s.api_key_object(key, self.roles([key])))

    @extend_schema(parameters=[PROJECT_ID, KEY_ID], request=s.APIKeyUpdateSerializer,
                   responses={200: s.ProjectAPIKeySerializer, **ERRORS}, summary="Update a project API key",
                   operation_id="update-project-api-key",
                   description="`allowed_models`: the models this key may use within its project's (`[]`: all); "
                               "`expires_in_seconds`: a new expiry from now.")
    def post(self, request, project_id: str, key_id: str):
        key = self.api_key(self.project(project_id), key_id)
        body = self.body(s.APIKeyUpdateSerializer, s.UNSUPPORTED["api_key"])
        if "allowed_models" in body:
            account_services.api_key_allowed_models_set(
                api_key=key, models=_normalized(body["allowed_models"], "allowed_models"))
        if "expires_in_seconds" in body:
            account_services.api_key_expiry_set(
                api_key=key, expires_at=timezone.now() + timedelta(seconds=body["expires_in_seconds"]))
        return Response(s.api_key_object(key, self.roles([key])))

    @extend_schema(parameters=[PROJECT_ID, KEY_ID], responses={200: s.APIKeyDeletedSerializer, **ERRORS},
                   summary="Delete a project API key", operation_id="delete-project-api-key")
    def delete(self, request, project_id: str, key_id: str):
        key = self.api_key(self.project(project_id), key_id)
        account_services.api_key_revoke(api_key=key)
        return Response({"object": "organization.project.api_key.deleted", "id": key.public_id, "deleted": True})


# --- Service accounts -----------------------------------------------------------------------------

ACCOUNT_ID = OpenApiParameter("service_account_id", str, OpenApiParameter.PATH, description="`svc_acct_...`")


class ServiceAccountListView(AdminAPIView):
    """``/v1/organization/projects/{project_id}/service_accounts``: list; create (with its key, returned once)."""

    @extend_schema(parameters=[PROJECT_ID, s.ListQuerySerializer],
                   responses={200: s.ServiceAccountListSerializer, **ERRORS},
                   summary="List project service accounts", operation_id="list-project-service-accounts")
    def get(self, request, project_id: str):
        accounts, has_more = page_of(self.project(project_id).service_accounts.all(),
                                     self.query(s.ListQuerySerializer))
        return Response(list_object([s.service_account_object(a) for a in accounts], has_more))

    @extend_schema(parameters=[PROJECT_ID], request=s.ServiceAccountCreateSerializer,
                   responses={200: s.ServiceAccountCreatedSerializer, **ERRORS},
                   summary="Create a project service account", operation_id="create-project-service-account",
                   description="Creates the service account and its API key; `api_key.value` is the key, "
                               "returned this once (only its hash is stored).")
    def post(self, request, project_id: str):
        project = self.project(project_id)
        body = self.body(s.ServiceAccountCreateSerializer)
        if project.archived_at is not None:
            raise InvalidRequestError(f"Project '{project.public_id}' is archived: no new keys.",
                                      code="project_archived")
        seconds = body.get("expires_in_seconds")
        created = account_services.service_account_create(
            project=project, name=body["name"],
            expires_at=timezone.now() + timedelta(seconds=seconds) if seconds else None)
        key = created.key.api_key
        return Response({**s.service_account_object(created.service_account), "api_key": {
            "object": "organization.project.service_account.api_key", "id": key.public_id, "name": key.name,
            "value": created.key.plaintext, "created_at": s.unix(key.created_at),
            "expires_at": s.unix(key.expires_at)}})


class ServiceAccountDetailView(AdminAPIView):
    """``/v1/organization/projects/{project_id}/service_accounts/{service_account_id}``: retrieve,
    delete (its keys are revoked at once)."""

    @extend_schema(parameters=[PROJECT_ID, ACCOUNT_ID], responses={200: s.ServiceAccountSerializer, **ERRORS},
                   summary="Retrieve a project service account", operation_id="retrieve-project-service-account")
    def get(self, request, project_id: str, service_account_id: str):
        return Response(s.service_account_object(self.service_account(self.project(project_id), service_account_id)))

    @extend_schema(parameters=[PROJECT_ID, ACCOUNT_ID], responses={200: s.ServiceAccountDeletedSerializer, **ERRORS},
                   summary="Delete a project service account", operation_id="delete-project-service-account")
    def delete(self, request, project_id: str, service_account_id: str):
        account = self.service_account(self.project(project_id), service_account_id)
        account_services.service_account_delete(service_account=account)
        return Response({"object": "organization.project.service_account.deleted", "id": service_account_id,
                         "deleted": True})


# --- Rate limits ----------------------------------------------------------------------------------

RATE_LIMIT_ID = OpenApiParameter("rate_limit_id", str, OpenApiParameter.PATH, description="`rl-<model>`")


def _rate_limits(project: Project) -> dict[str, Limit]:
    return {row.model: row for row in Limit.objects.filter(project=project, api_key=None).exclude(model="")}


class RateLimitListView(AdminAPIView):
    """``GET /v1/organization/projects/{project_id}/rate_limits``: one per active model (by name)."""

    @extend_schema(parameters=[PROJECT_ID, s.RateLimitListQuerySerializer],
                   responses={200: s.RateLimitListSerializer, **ERRORS},
                   summary="List project rate limits", operation_id="list-project-rate-limits",
                   description="The project's RPM/TPM per model (`null`: unlimited), checked with the project's, "
                               "the organization's and the key's own limits.")
    def get(self, request, project_id: str):
        project = self.project(project_id)
        query = self.query(s.RateLimitListQuerySerializer)
        rows = _rate_limits(project)
        objects = [s.rate_limit_object(m.name, getattr(rows.get(m.name), "rpm", None),
                                       getattr(rows.get(m.name), "tpm", None)) for m in embedding_models_active()]
        ids = [o["id"] for o in objects]
        for param in ("after", "before"):
            if query.get(param) and query[param] not in ids:
                raise InvalidRequestError(f"Invalid value for '{param}': no rate limit '{query[param]}'.",
                                          param=param, code="invalid_value")
        start = ids.index(query["after"]) + 1 if query.get("after") else 0
        end = ids.index(query["before"]) if query.get("before") else len(ids)
        window, limit = objects[start:end], query["limit"]
        page = window[-limit:] if query.get("before") else window[:limit]
        return Response(list_object(page, len(window) > limit))


class RateLimitDetailView(AdminAPIView):
    """``POST /v1/organization/projects/{project_id}/rate_limits/{rate_limit_id}``: set a model's RPM/TPM."""

    @extend_schema(parameters=[PROJECT_ID, RATE_LIMIT_ID], request=s.RateLimitUpdateSerializer,
                   responses={200: s.RateLimitSerializer, **ERRORS}, summary="Modify a project rate limit",
                   operation_id="update-project-rate-limits",
                   description="Fields left out keep their value; `null` makes a limit unlimited. Applies to the "
                               "next request.")
    def post(self, request, project_id: str, rate_limit_id: str):
        project = self.project(project_id)
        try:
            model = embedding_model_get(name=rate_limit_id.removeprefix("rl-")) if rate_limit_id.startswith("rl-") \
                else None
        except NotFoundError:
            model = None
        if model is None:
            raise NotFoundError(f"No rate limit with id '{rate_limit_id}' in project '{project.public_id}'.",
                                code="not_found")
        body = self.body(s.RateLimitUpdateSerializer, s.UNSUPPORTED["rate_limit"])
        limit = limit_set(organization=project.organization, project=project, model=model.name,
                          rpm=body.get("max_requests_per_1_minute", UNSET),
                          tpm=body.get("max_tokens_per_1_minute", UNSET))
        return Response(s.rate_limit_object(model.name, limit.rpm, limit.tpm))


# --- Audit logs -----------------------------------------------------------------------------------


class AuditLogListView(AdminAPIView):
    """``GET /v1/organization/audit_logs``: the organization's changes, newest first (OpenAI's filters)."""

    @extend_schema(parameters=[s.AuditLogQuerySerializer], responses={200: s.AuditLogListSerializer, **ERRORS},
                   summary="List audit logs", operation_id="list-audit-logs")
    def get(self, request):
        query = self.query(s.AuditLogQuerySerializer)
        effective_at = {op: datetime.fromtimestamp(query[f"effective_at[{op}]"], tz=UTC)
                        for op in s.AuditLogQuerySerializer.COMPARISONS if f"effective_at[{op}]" in query}
        entries = account_selectors.audit_logs_for_organization(
            organization_id=self.organization_id, project_ids=query.get("project_ids"),
            event_types=query.get("event_types"), actor_ids=query.get("actor_ids"),
            actor_emails=query.get("actor_emails"), resource_ids=query.get("resource_ids"), effective_at=effective_at)
        rows, has_more = page_of(entries, query, newest_first=True)
        return Response(list_object([s.audit_log_object(e) for e in rows], has_more))
