"""Console forms (plain Django forms; CSRF comes from the middleware and ``{% csrf_token %}``)."""
from __future__ import annotations

import datetime as dt

from django import forms
from django.contrib.auth import get_user_model
from django.db.models import Q
from django.utils import timezone

from accounts.models import Membership


class ProjectCreateForm(forms.Form):
    name = forms.CharField(max_length=200, strip=True,
                           widget=forms.TextInput(attrs={"placeholder": "e.g. Search backend"}))


class APIKeyCreateForm(forms.Form):
    """A key's name and optional expiry date (the key stops working at 00:00 UTC of that day)."""

    name = forms.CharField(max_length=200, strip=True,
                           widget=forms.TextInput(attrs={"placeholder": "e.g. production"}))
    expires_on = forms.DateField(required=False, label="Expires on (optional)",
                                 widget=forms.DateInput(attrs={"type": "date"}),
                                 help_text="The key stops working at 00:00 UTC of this day.")

    def clean_expires_on(self):
        day = self.cleaned_data.get("expires_on")
        if day is not None and day <= timezone.now().date():
            raise forms.ValidationError("Pick a day after today.")
        return day

    @property
    def expires_at(self) -> dt.datetime | None:
        day = self.cleaned_data.get("expires_on")
        return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC) if day else None


class MemberAddForm(forms.Form):
    """Add an existing user (by username or e-mail) with a role among ``roles``."""

    user = forms.CharField(max_length=254, label="Username or e-mail")
    role = forms.ChoiceField(choices=())

    def __init__(self, *args, roles: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = [(r, Membership.Role(r).label) for r in roles]
        self.fields["role"].initial = Membership.Role.MEMBER

    def clean_user(self):
        value = self.cleaned_data["user"].strip()
        users = list(get_user_model().objects.filter(Q(username=value) | Q(email__iexact=value))[:2])
        if len(users) != 1:
            raise forms.ValidationError("No single user has this username or e-mail.")
        return users[0]


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=())

    def __init__(self, *args, roles: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = [(r, Membership.Role(r).label) for r in roles]
