"""``/billing/...``: statement downloads for signed-in organization owners/admins."""
from django.urls import re_path

from . import downloads

urlpatterns = [
    re_path(r"^statements/(?P<org_id>org_[A-Za-z0-9]+)/(?P<year>\d{4})-(?P<month>\d{2})\.(?P<fmt>csv|json)$",
            downloads.statement_download, name="billing-statement-download"),
]
