"""Console forms of the usage page."""
from __future__ import annotations

import datetime as dt

from django import forms
from django.utils import timezone

# The longest range the usage page draws (days): a year, as OpenAI's usage page allows.
MAX_RANGE_DAYS = 366
DEFAULT_RANGE_DAYS = 30
# The last day the page can show: its queries end at the next UTC midnight, which must exist.
LAST_DAY = dt.date.max - dt.timedelta(days=1)


class UsageFilterForm(forms.Form):
    """GET filters of the usage page: a project of the organization (or all), a date range
    (UTC days, both included; default the last 30 days) and the split (model or key)."""

    project = forms.ChoiceField(required=False, label="Project")
    start = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    group_by = forms.ChoiceField(required=False, label="Split by",
                                 choices=[("model", "Model"), ("key", "API key")])

    def __init__(self, data, *, projects, **kwargs):
        super().__init__(data, **kwargs)
        self.projects = {p.public_id: p for p in projects}
        self.fields["project"].choices = [("", "All projects"), *((p.public_id, p.name) for p in projects)]

    @staticmethod
    def default_range() -> tuple[dt.date, dt.date]:
        today = timezone.now().date()
        return today - dt.timedelta(days=DEFAULT_RANGE_DAYS - 1), today

    def clean(self):
        cleaned = super().clean()
        if "start" in self.errors or "end" in self.errors:
            return cleaned
        end = cleaned.get("end") or self.default_range()[1]
        start = cleaned.get("start") or end - dt.timedelta(days=DEFAULT_RANGE_DAYS - 1)
        if start > end:
            raise forms.ValidationError("The start date is after the end date.")
        if end > LAST_DAY:
            raise forms.ValidationError(f"Choose dates up to {LAST_DAY.isoformat()}.")
        if (end - start).days + 1 > MAX_RANGE_DAYS:
            raise forms.ValidationError(f"Choose at most {MAX_RANGE_DAYS} days.")
        cleaned.update(start=start, end=end, group_by=cleaned.get("group_by") or "model",
                       project=self.projects.get(cleaned.get("project") or ""))
        return cleaned

    def filters(self) -> dict:
        """``{"project", "start", "end", "group_by"}``: the valid filters, or the defaults."""
        if self.is_valid():
            return {k: self.cleaned_data[k] for k in ("project", "start", "end", "group_by")}
        start, end = self.default_range()
        return {"project": None, "start": start, "end": end, "group_by": "model"}
