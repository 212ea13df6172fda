"""The tenant console's URLs, mounted at ``/console/`` (namespace ``console``).

Every URL under ``orgs/<org>/`` must be served by a subclass of
`console.base.OrganizationView` (tests/console/test_console_permissions.py checks it).
"""
from django.urls import include, path, re_path

from . import batch_views, billing_views, status_views, views

app_name = "console"

organization_urls = [
    path("", views.ProjectListView.as_view(), name="projects"),
    path("projects/<str:project>/keys/", views.APIKeyListView.as_view(), name="keys"),
    path("projects/<str:project>/keys/<str:key>/revoke/", views.APIKeyRevokeView.as_view(), name="key-revoke"),
    path("projects/<str:project>/models/", views.ModelAccessView.as_view(), name="project-models"),
    path("projects/<str:project>/keys/<str:key>/models/", views.ModelAccessView.as_view(), name="key-models"),
    path("audit-log/", views.AuditLogView.as_view(), name="audit-log"),
    path("projects/<str:project>/batches/", batch_views.BatchListView.as_view(), name="batches"),
    path("projects/<str:project>/batches/<str:batch>/cancel/", batch_views.BatchCancelView.as_view(),
         name="batch-cancel"),
    path("projects/<str:project>/files/<str:file>/content", batch_views.BatchFileDownloadView.as_view(),
         name="batch-file"),
    path("members/", views.MemberListView.as_view(), name="members"),
    path("members/invitations/<str:invitation>/revoke/", views.InvitationRevokeView.as_view(),
         name="invitation-revoke"),
    path("members/<str:username>/", views.MemberUpdateView.as_view(), name="member-update"),
    path("members/<str:username>/remove/", views.MemberRemoveView.as_view(), name="member-remove"),
    path("admin-keys/", views.AdminAPIKeyListView.as_view(), name="admin-keys"),
    path("admin-keys/<str:key>/revoke/", views.AdminAPIKeyRevokeView.as_view(), name="admin-key-revoke"),
    path("usage/", billing_views.UsageView.as_view(), name="usage"),
    path("billing/", billing_views.BillingView.as_view(), name="billing"),
    re_path(r"^billing/statements/(?P<period>\d{4}-\d{2})\.(?P<fmt>csv|json)$",
            billing_views.StatementDownloadView.as_view(), name="statement-download"),
]

urlpatterns = [
    path("", views.console_home, name="home"),
    path("login/", views.SignInView.as_view(), name="login"),
    path("logout/", views.SignOutView.as_view(), name="logout"),
    # Outside orgs/: the invitee is not a member yet (the token is the authorization).
    path("invitations/<str:token>/", views.InvitationAcceptView.as_view(), name="invitation-accept"),
    path("orgs/<str:org>/", include(organization_urls)),
    # Staff only (no organization): the platform's workers, queues, last hour and rollup lag.
    path("platform/", status_views.PlatformStatusView.as_view(), name="platform-status"),
]
