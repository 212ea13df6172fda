"""The tenant console's usage page (scoped by `accounts.console.OrganizationView`)."""
from __future__ import annotations

from accounts.console import OrganizationView
from accounts.selectors import projects_for_organization
from accounts.templatetags.console import human_count

from .charts import daily_stacked_bars
from .forms import UsageFilterForm
from .selectors import usage_daily, usage_recent


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
        )
        return context
