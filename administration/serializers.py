"""What the Admin API accepts (query and body serializers) and answers (the objects, built by the
``*_object`` functions; the output serializers document them in the OpenAPI schema).

Shapes and names are OpenAI's Admin API (`openai.types.admin.organization`); the additions are
``allowed_models`` on project API keys, nullable rate limits (``null`` = unlimited) and the
``command``/``system`` audit log actors.
"""
from __future__ import annotations

from rest_framework import serializers

from accounts.audit import EVENT_TYPES, user_public_id
from accounts.models import APIKey, AuditLog, Project, ServiceAccount
from billing.api import MAX_UNIX_TIME, QueryListField
from limits.services import LIMIT_MAX


def unix(value) -> int | None:
    """A datetime as Unix seconds (OpenAI's timestamps); ``None`` stays ``None``."""
    return int(value.timestamp()) if value is not None else None


# --- Queries -------------------------------------------------------------------------------------


class ListQuerySerializer(serializers.Serializer):
    """OpenAI's cursor pagination: ``limit`` (1-100, default 20) objects after the object ``after``."""

    limit = serializers.IntegerField(min_value=1, max_value=100, default=20)
    after = serializers.CharField(required=False, max_length=200,
                                  help_text="An object id: the page starts after it.")


class ProjectListQuerySerializer(ListQuerySerializer):
    include_archived = serializers.BooleanField(default=False, help_text="Also list archived projects.")


class RateLimitListQuerySerializer(ListQuerySerializer):
    limit = serializers.IntegerField(min_value=1, max_value=100, default=100)
    before = serializers.CharField(required=False, max_length=200,
                                   help_text="An object id: the page ends before it.")


class AuditLogQuerySerializer(ListQuerySerializer):
    """``GET /v1/organization/audit_logs``: OpenAI's filters. ``effective_at[gt|gte|lt|lte]`` (Unix
    seconds); lists as ``name=a&name=b``, ``name[]=a`` or ``name=a,b``; ``before``/``after`` cursors
    (entries are listed newest first)."""

    before = serializers.CharField(required=False, max_length=200,
                                   help_text="An entry id: the page ends before it (newer entries).")
    project_ids = QueryListField()
    event_types = QueryListField(help_text=f"Event types, e.g. `project.created`; recorded here: "
                                           f"{', '.join(EVENT_TYPES)}.")
    actor_ids = QueryListField(help_text="Admin key ids (`key_...`), user ids (`user-<n>`) or command names.")
    actor_emails = QueryListField()
    resource_ids = QueryListField(help_text="Ids of the changed objects (project, key, service account, ...).")

    COMPARISONS = ("gt", "gte", "lt", "lte")

    def get_fields(self):
        fields = super().get_fields()
        for op in self.COMPARISONS:
            fields[f"effective_at[{op}]"] = serializers.IntegerField(
                required=False, min_value=0, max_value=MAX_UNIX_TIME,
                help_text=f"Only entries whose `effective_at` (Unix s) is {op} this.")
        return fields


# --- Bodies --------------------------------------------------------------------------------------


class ProjectCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, help_text="The project's name (unique in the organization).")


class ProjectUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, help_text="The new name.")


def model_list_field(**kwargs) -> serializers.ListField:
    return serializers.ListField(child=serializers.CharField(max_length=200), max_length=100, **kwargs)


class ModelPermissionsUpdateSerializer(serializers.Serializer):
    """OpenAI's project model permissions. Here a project has an allowlist only: ``allow_list`` with
    the models, or ``deny_list`` with none (every model: the same as ``DELETE``)."""

    mode = serializers.ChoiceField(choices=["allow_list", "deny_list"])
    model_ids = model_list_field(help_text="Model names or aliases (stored as names).")

    def validate(self, attrs):
        if attrs["mode"] == "allow_list" and not attrs["model_ids"]:
            raise serializers.ValidationError({"model_ids": [serializers.ErrorDetail(
                "An empty allow_list would allow no model; to allow every model, DELETE the model permissions "
                "or send mode 'deny_list' with no model_ids.", code="invalid")]})
        if attrs["mode"] == "deny_list" and attrs["model_ids"]:
            raise serializers.ValidationError({"mode": [serializers.ErrorDetail(
                "Deny lists are not supported: send mode 'allow_list' with the models to allow.",
                code="unsupported_value")]})
        return attrs


class APIKeyUpdateSerializer(serializers.Serializer):
    """OpenAI's project API key update (``expires_in_seconds``), plus ``allowed_models``."""

    allowed_models = model_list_field(
        required=False, help_text="The models this key may use, within its project's; `[]` = every model.")
    expires_in_seconds = serializers.IntegerField(required=False, min_value=1, max_value=10 * 365 * 86400,
                                                  help_text="The key expires this many seconds from now.")


class ServiceAccountCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    expires_in_seconds = serializers.IntegerField(required=False, allow_null=True, min_value=1,
                                                  max_value=10 * 365 * 86400,
                                                  help_text="The key expires this many seconds from now.")
    create_service_account_only = serializers.BooleanField(
        required=False, allow_null=True, help_text="Not supported (`true` is refused): a service account comes "
                                                   "with its key.")

    def validate_create_service_account_only(self, value):
        if value:
            raise serializers.ValidationError("Service accounts without a key are not supported.",
                                              code="unsupported_value")
        return value


class RateLimitUpdateSerializer(serializers.Serializer):
    """OpenAI's project rate limit update for one model; ``null`` clears a limit (unlimited)."""

    max_requests_per_1_minute = serializers.IntegerField(required=False, allow_null=True, min_value=0,
                                                         max_value=LIMIT_MAX["rpm"])
    max_tokens_per_1_minute = serializers.IntegerField(required=False, allow_null=True, min_value=0,
                                                       max_value=LIMIT_MAX["tpm"])


# Request fields of OpenAI's API that this platform has no counterpart for: refused (400), never ignored.
UNSUPPORTED = {
    "rate_limit": ("max_images_per_1_minute", "max_audio_megabytes_per_1_minute", "max_requests_per_1_day",
                   "batch_1_day_max_input_tokens"),
    "api_key": ("scopes",),
    "project": ("geography", "residency", "external_key_id"),
}


# --- The objects ---------------------------------------------------------------------------------


def project_object(project: Project) -> dict:
    """OpenAI's ``organization.project``."""
    return {"object": "organization.project", "id": project.public_id, "name": project.name,
            "created_at": unix(project.created_at), "archived_at": unix(project.archived_at),
            "status": "archived" if project.archived_at else "active"}


def service_account_object(account: ServiceAccount) -> dict:
    """OpenAI's ``organization.project.service_account``."""
    return {"object": "organization.project.service_account", "id": account.public_id, "name": account.name,
            "role": account.role, "created_at": unix(account.created_at)}


def api_key_object(key: APIKey, roles: dict[int, str]) -> dict:
    """OpenAI's ``organization.project.api_key`` (``roles``: user pk -> role in the organization, for the
    owner; a user who left makes the owner ``inactive``), plus ``allowed_models``."""
    owner: dict = {"type": None}
    access = "active"
    if key.service_account_id:
        owner = {"type": "service_account", "service_account": {
            k: v for k, v in service_account_object(key.service_account).items() if k != "object"}}
    elif key.created_by_id:
        user = key.created_by
        owner = {"type": "user", "user": {"id": user_public_id(user), "name": user.get_username(), "email": user.email,
                                          "role": roles.get(user.pk, "none"), "created_at": unix(user.date_joined)}}
        access = "active" if user.pk in roles else "inactive"
    return {"object": "organization.project.api_key", "id": key.public_id, "name": key.name,
            "redacted_value": key.masked, "created_at": unix(key.created_at), "last_used_at": unix(key.last_used_at),
            "expires_at": unix(key.expires_at), "owner": owner, "owner_project_access": access,
            "allowed_models": key.allowed_models}


def rate_limit_object(model: str, rpm: int | None, tpm: int | None) -> dict:
    """OpenAI's ``project.rate_limit`` of ``model`` (``None``: unlimited)."""
    return {"object": "project.rate_limit", "id": f"rl-{model}", "model": model,
            "max_requests_per_1_minute": rpm, "max_tokens_per_1_minute": tpm}


def model_permissions_object(project: Project) -> dict:
    """OpenAI's ``project.model_permissions``: the allowlist, or (none: every model) an empty deny list."""
    if project.allowed_models:
        return {"object": "project.model_permissions", "mode": "allow_list", "model_ids": project.allowed_models}
    return {"object": "project.model_permissions", "mode": "deny_list", "model_ids": []}


def audit_log_object(entry: AuditLog) -> dict:
    """OpenAI's audit log object: the event's details under the key named by its ``type``."""
    project = {"id": entry.project_public_id, "name": entry.project_name} if entry.project_public_id else None
    return {"id": entry.public_id, "type": entry.type,
            "effective_at": unix(entry.effective_at), "actor": entry.actor, "project": project,
            entry.type: entry.details}


# --- Their schema (documentation) ---------------------------------------------------------------


def const(value: str) -> serializers.CharField:
    """A field that always holds ``value`` (documented as text, as `ModelObjectSerializer` does:
    drf-spectacular would name one-value enums of the many ``object`` fields so that they collide)."""
    return serializers.CharField(help_text=f"Always `{value}`.")


class ProjectSerializer(serializers.Serializer):
    object = const("organization.project")
    id = serializers.CharField(help_text="`proj_...`")
    name = serializers.CharField()
    created_at = serializers.IntegerField(help_text="Unix seconds.")
    archived_at = serializers.IntegerField(allow_null=True, help_text="Unix seconds, or null.")
    status = serializers.ChoiceField(choices=["active", "archived"])


class ServiceAccountSerializer(serializers.Serializer):
    object = const("organization.project.service_account")
    id = serializers.CharField(help_text="`svc_acct_...`")
    name = serializers.CharField()
    role = serializers.ChoiceField(choices=["member"])
    created_at = serializers.IntegerField()


class ServiceAccountKeySerializer(serializers.Serializer):
    object = const("organization.project.service_account.api_key")
    id = serializers.CharField(help_text="`key_...`")
    name = serializers.CharField()
    value = serializers.CharField(help_text="The key (`sk-proj-...`): returned this once, stored nowhere.")
    created_at = serializers.IntegerField()
    expires_at = serializers.IntegerField(allow_null=True)


class ServiceAccountCreatedSerializer(ServiceAccountSerializer):
    api_key = ServiceAccountKeySerializer()


class OwnerUserSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="`user-<n>`")
    name = serializers.CharField()
    email = serializers.CharField(allow_blank=True)
    role = serializers.CharField(help_text="The user's role in the organization (`none`: no longer a member).")
    created_at = serializers.IntegerField()


class OwnerServiceAccountSerializer(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()
    role = serializers.CharField()
    created_at = serializers.IntegerField()


class OwnerSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=["user", "service_account"], allow_null=True,
                                   help_text="null: made by a management command.")
    user = OwnerUserSerializer(required=False)
    service_account = OwnerServiceAccountSerializer(required=False)


class ProjectAPIKeySerializer(serializers.Serializer):
    object = const("organization.project.api_key")
    id = serializers.CharField(help_text="`key_...`")
    name = serializers.CharField(allow_blank=True)
    redacted_value = serializers.CharField(help_text="`sk-proj-AbCd...wxYz`")
    created_at = serializers.IntegerField()
    last_used_at = serializers.IntegerField(allow_null=True)
    expires_at = serializers.IntegerField(allow_null=True)
    owner = OwnerSerializer()
    owner_project_access = serializers.ChoiceField(choices=["active", "inactive"])
    allowed_models = serializers.ListField(child=serializers.CharField(),
                                           help_text="The models this key may use within its project's; "
                                                     "empty = every model.")


class RateLimitSerializer(serializers.Serializer):
    object = const("project.rate_limit")
    id = serializers.CharField(help_text="`rl-<model>`")
    model = serializers.CharField()
    max_requests_per_1_minute = serializers.IntegerField(allow_null=True, help_text="RPM; null = unlimited.")
    max_tokens_per_1_minute = serializers.IntegerField(allow_null=True, help_text="TPM; null = unlimited.")


class ModelPermissionsSerializer(serializers.Serializer):
    object = const("project.model_permissions")
    mode = serializers.ChoiceField(choices=["allow_list", "deny_list"],
                                   help_text="`allow_list` with the allowed models, or `deny_list` with none "
                                             "(every model is allowed).")
    model_ids = serializers.ListField(child=serializers.CharField())


class ModelPermissionsDeletedSerializer(serializers.Serializer):
    object = const("project.model_permissions.deleted")
    deleted = serializers.BooleanField()


def deleted_serializer(name: str, object_type: str) -> type[serializers.Serializer]:
    """The schema of OpenAI's ``{"object": "<type>.deleted", "id", "deleted": true}``."""
    return type(name, (serializers.Serializer,), {"object": const(object_type),
                                                 "id": serializers.CharField(), "deleted": serializers.BooleanField()})


APIKeyDeletedSerializer = deleted_serializer("APIKeyDeletedSerializer", "organization.project.api_key.deleted")
ServiceAccountDeletedSerializer = deleted_serializer("ServiceAccountDeletedSerializer",
                                                     "organization.project.service_account.deleted")


class AuditLogProjectSerializer(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()


class AuditLogSerializer(serializers.Serializer):
    """OpenAI's audit log object; the event's details are under the key named by ``type``."""

    id = serializers.CharField(help_text="`audit_log-...`")
    type = serializers.CharField(help_text="The event type, e.g. `project.created`.")
    effective_at = serializers.IntegerField(help_text="Unix seconds.")
    actor = serializers.DictField(help_text=(
        "Who: `{\"type\": \"session\", \"session\": {\"user\": {\"id\", \"email\", \"username\"}, \"ip_address\", "
        "\"source\": \"console\"|\"admin\"}}`, `{\"type\": \"api_key\", \"api_key\": {\"id\", \"type\": \"admin\"}}`, "
        "`{\"type\": \"command\", \"command\": {\"name\", \"os_user\"}}` or `{\"type\": \"system\", ...}`."))
    project = AuditLogProjectSerializer(allow_null=True, help_text="The project the change concerns, or null.")

    def get_fields(self):
        fields = super().get_fields()
        for event in EVENT_TYPES:
            fields[event] = serializers.DictField(required=False, help_text=f"The details of a `{event}`.")
        return fields


def list_serializer(name: str, item: type[serializers.Serializer]) -> type[serializers.Serializer]:
    """The schema of OpenAI's list: ``{"object": "list", "data", "first_id", "last_id", "has_more"}``."""
    return type(name, (serializers.Serializer,), {
        "object": const("list"), "data": item(many=True),
        "first_id": serializers.CharField(allow_null=True), "last_id": serializers.CharField(allow_null=True),
        "has_more": serializers.BooleanField()})


ProjectListSerializer = list_serializer("ProjectListSerializer", ProjectSerializer)
APIKeyListSerializer = list_serializer("ProjectAPIKeyListSerializer", ProjectAPIKeySerializer)
ServiceAccountListSerializer = list_serializer("ServiceAccountListSerializer", ServiceAccountSerializer)
RateLimitListSerializer = list_serializer("RateLimitListSerializer", RateLimitSerializer)
AuditLogListSerializer = list_serializer("AuditLogListSerializer", AuditLogSerializer)
