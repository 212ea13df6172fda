"""``/v1/organization/...``: OpenAI's Admin API (admin keys; `administration.api`)."""
from django.urls import path, re_path

from . import api

project = "projects/<str:project_id>"

urlpatterns = [
    path("projects", api.ProjectListView.as_view(), name="admin-projects"),
    path(f"{project}", api.ProjectDetailView.as_view(), name="admin-project"),
    path(f"{project}/archive", api.ProjectArchiveView.as_view(), name="admin-project-archive"),
    path(f"{project}/model_permissions", api.ModelPermissionsView.as_view(), name="admin-model-permissions"),
    path(f"{project}/api_keys", api.ProjectAPIKeyListView.as_view(), name="admin-api-keys"),
    path(f"{project}/api_keys/<str:key_id>", api.ProjectAPIKeyDetailView.as_view(), name="admin-api-key"),
    path(f"{project}/service_accounts", api.ServiceAccountListView.as_view(), name="admin-service-accounts"),
    path(f"{project}/service_accounts/<str:service_account_id>", api.ServiceAccountDetailView.as_view(),
         name="admin-service-account"),
    path(f"{project}/rate_limits", api.RateLimitListView.as_view(), name="admin-rate-limits"),
    # rl-<model>: a model name may hold "/" (and the id any character: unknown ones are a 404 envelope).
    re_path(r"^projects/(?P<project_id>[^/]+)/rate_limits/(?P<rate_limit_id>[\s\S]+)$",
            api.RateLimitDetailView.as_view(), name="admin-rate-limit"),
    path("audit_logs", api.AuditLogListView.as_view(), name="admin-audit-logs"),
]
