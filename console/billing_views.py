"""The tenant console's usage and billing pages and statement downloads (all scoped by
`accounts.console.OrganizationView`)."""
from __future__ import annotations

from datetime import date

from django.conf import settings
from django.http import Http404, HttpResponse, JsonResponse
from django.utils import timezone

from accounts import roles
from accounts.selectors import projects_for_organization
from billing.exports import statement_export_csv, statement_export_json
from billing.models import Statement
from billing.selectors import statements_for_organization, usage_daily, usage_recent
from billing.services import month_after, statement_draft

from .base import OrganizationView, limit_bars
from .billing_forms import UsageFilterForm

from .charts import daily_stacked_bars
from .templatetags.console import human_count


class UsageView(OrganizationView):
    """``/console/orgs/<org>/usage/?project=&start=&end=&group_by=``: tokens per day as a
    stacked bar chart (inline SVG, split by model or key), the same figures as a table,
    and the newest requests. Every role may read it."""

    template_name = "console/usage.html"
    nav = "usage"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        start, end = UsageFilterForm.default_range()
        form = UsageFilterForm(self.request.GET or None,
                               projects=list(projects_for_organization(organization=self.organization)),
                               initial={"start": start, "end": end, "group_by": "model"})
        filters = form.filters()
        scope = {"organization": self.organization, "project": filters["project"],
                 "start": filters["start"], "end": filters["end"]}
        rows = usage_daily(**scope, group_by=filters["group_by"])
        context.update(
            form=form,
            filters=filters,
            rows=rows,
            chart=daily_stacked_bars(rows, start=filters["start"], end=filters["end"], humanize=human_count),
            total_requests=sum(r.requests for r in rows),
            total_tokens=sum(r.total_tokens for r in rows),
            recent=usage_recent(**scope),
            limit_bars=limit_bars(organization=self.organization, project=filters["project"]),
        )
        return context


class BillingView(OrganizationView):
    """``/console/orgs/<org>/billing/``: the organization's monthly statements, newest first
    (closed ones as stored, open months as drafts computed now: `statements_for_organization`),
    with totals and CSV/JSON downloads. Owners and admins only (`accounts.roles.can_view_billing`);
    a GET writes nothing."""

    template_name = "console/billing.html"
    nav = "billing"

    def get(self, request, *args, **kwargs):
        self.require(roles.can_view_billing(self.role))
        return super().get(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        statements = statements_for_organization(organization=self.organization, today=timezone.now().date())
        context.update(statements=statements, grace_hours=settings.BILLING_CLOSE_GRACE_HOURS,
                       rollup_minutes=max(1, settings.BILLING_ROLLUP_INTERVAL_SECONDS // 60))
        return context


class StatementDownloadView(OrganizationView):
    """``/console/orgs/<org>/billing/statements/<YYYY-MM>.csv`` (or ``.json``): the month's
    statement as an attachment, in `billing.exports`' formats. A closed statement as stored
    (the same bytes forever); an open month as a draft computed now, without writing
    (`billing.services.statement_draft`). Owners and admins only (403 otherwise); a month
    that is not a month, or one in the future, is 404."""

    def get(self, request, *args, **kwargs):
        self.require(roles.can_view_billing(self.role))
        year, month = (int(part) for part in self.kwargs["period"].split("-"))
        if not 1 <= month <= 12 or year < 1970:
            raise Http404("No such statement.")
        period = date(year, month, 1)
        if period >= month_after(timezone.now().date().replace(day=1)):
            raise Http404("No statement for a month that has not started.")
        statement = Statement.objects.filter(organization=self.organization, period_start=period,
                                             status=Statement.Status.CLOSED).first()
        lines = None
        if statement is None:
            draft = statement_draft(organization=self.organization, period_start=period)
            statement, lines = draft.statement, draft.lines
        fmt = self.kwargs["fmt"]
        if fmt == "json":
            response = JsonResponse(statement_export_json(statement, lines), json_dumps_params={"indent": 2})
        else:
            response = HttpResponse(statement_export_csv(statement, lines), content_type="text/csv; charset=utf-8")
        filename = f"statement-{self.organization.public_id}-{period:%Y-%m}.{fmt}"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        response["Cache-Control"] = "private, no-store"
        return response
