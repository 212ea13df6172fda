"""The OpenAPI (drf-spectacular) security schemes of the two bearer-key authentications.

Registered when imported (`accounts.apps.AccountsConfig.ready`).
"""
from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ProjectKeyScheme(OpenApiAuthenticationExtension):
    """``Authorization: Bearer sk-proj-...``: a project API key (``/v1/embeddings``, ``/v1/models``)."""

    target_class = "accounts.authentication.APIKeyAuthentication"
    name = "ProjectKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "A project API key, `sk-proj-...`."}


class AdminKeyScheme(OpenApiAuthenticationExtension):
    """``Authorization: Bearer sk-admin-...``: an organization admin key (``/v1/organization/...``)."""

    target_class = "accounts.authentication.AdminAPIKeyAuthentication"
    name = "AdminKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An organization admin key, `sk-admin-...`."}
