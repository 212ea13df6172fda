"""The OpenAPI (drf-spectacular) security schemes of the two API-key authentications.

Registered when imported (`accounts.apps.AccountsConfig.ready`).
"""
from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ProjectKeyScheme(OpenApiAuthenticationExtension):
    """``Authorization: Bearer sk-proj-...`` or ``Authorization: Api-Key sk-proj-...`` (Yandex AI
    Studio's scheme): a project API key (``/v1/embeddings``, ``/v1/models``); either one."""

    target_class = "accounts.authentication.APIKeyAuthentication"
    name = ["ProjectKey", "ProjectKeyApiKey"]

    def get_security_requirement(self, auto_schema):
        return [{name: []} for name in self.name]  # either scheme (OR)

    def get_security_definition(self, auto_schema):
        return [{"type": "http", "scheme": "bearer", "description": "A project API key, `sk-proj-...`."},
                {"type": "http", "scheme": "Api-Key",
                 "description": "A project API key sent as Yandex AI Studio's clients send theirs: "
                                "`Authorization: Api-Key sk-proj-...`."}]


class AdminKeyScheme(OpenApiAuthenticationExtension):
    """``Authorization: Bearer sk-admin-...``: an organization admin key (``/v1/organization/...``)."""

    target_class = "accounts.authentication.AdminAPIKeyAuthentication"
    name = "AdminKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An organization admin key, `sk-admin-...`."}
