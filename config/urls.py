"""URL configuration: the ``/v1`` API, API docs, the web console, the admin."""
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView

from . import views
from .metrics import metrics_view

urlpatterns = [
    path("v1/", include("embeddings.urls")),
    path("v1/", include("batches.urls")),
    path("v1/organization/", include("billing.api_urls")),
    path("v1/organization/", include("administration.urls")),
    re_path(r"^v1/", views.v1_not_found),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularRedocView.as_view(url_name="schema"), name="api-docs"),
    path("console/", include("console.urls")),
    # Models that moved app: the admin's old addresses still lead to them.
    re_path(r"^admin/billing/usagerecord/(?P<rest>.*)$", views.admin_model_moved, {"new": "metering_usagerecord"}),
    re_path(r"^admin/accounts/limit/(?P<rest>.*)$", views.admin_model_moved, {"new": "limits_limit"}),
    path("admin/", admin.site.urls),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("", RedirectView.as_view(pattern_name="console:home"), name="root"),
]

handler400 = "config.views.bad_request"
handler403 = "config.views.permission_denied"
handler404 = "config.views.not_found"
handler500 = "config.views.server_error"
