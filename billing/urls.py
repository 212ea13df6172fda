"""Console URLs of billing, included under ``/console/orgs/<org>/`` by `accounts.urls`."""
from django.urls import path, re_path

from . import views

urlpatterns = [
    path("usage/", views.UsageView.as_view(), name="usage"),
    path("billing/", views.BillingView.as_view(), name="billing"),
    re_path(r"^billing/statements/(?P<period>\d{4}-\d{2})\.(?P<fmt>csv|json)$",
            views.StatementDownloadView.as_view(), name="statement-download"),
]
