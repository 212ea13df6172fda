"""Statement downloads for signed-in console users (session auth), scoped by `accounts.Membership`.

``GET /billing/statements/<org_public_id>/<YYYY-MM>.csv`` (or ``.json``): owners and
admins of the organization get the statement (a closed one as stored; an open month
as a draft computed now); anyone else gets 404 (never a hint that the organization
exists); anonymous users are sent to ``LOGIN_URL``.
"""
from __future__ import annotations

from datetime import date

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from accounts.models import Membership, Organization

from .exports import statement_export_csv, statement_export_json
from .models import Statement
from .services import statement_build

# Roles that may download bills (OpenAI and most SaaS consoles restrict billing to owners/admins).
BILLING_ROLES = (Membership.Role.OWNER, Membership.Role.ADMIN)


@require_GET
@login_required
def statement_download(request, org_id: str, year: str, month: str, fmt: str):
    """The statement of ``org_id`` for ``year``-``month`` as a CSV or JSON attachment."""
    year, month = int(year), int(month)
    organization = Organization.objects.filter(
        public_id=org_id, memberships__user=request.user, memberships__role__in=BILLING_ROLES).first()
    if organization is None or not 1 <= month <= 12 or year < 1:
        raise Http404("No such statement.")
    period = date(year, month, 1)
    statement = Statement.objects.filter(organization=organization, period_start=period).first()
    if statement is None or statement.status != Statement.Status.CLOSED:
        statement = statement_build(organization=organization, period_start=period)
    filename = f"statement-{organization.public_id}-{period:%Y-%m}.{fmt}"
    if fmt == "json":
        response = JsonResponse(statement_export_json(statement), json_dumps_params={"indent": 2})
    else:
        response = HttpResponse(statement_export_csv(statement), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
