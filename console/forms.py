"""Console forms (plain Django forms; CSRF comes from the middleware and ``{% csrf_token %}``)."""
from __future__ import annotations

import datetime as dt

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UserCreationForm
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


class ModelAccessForm(forms.Form):
    """The models a project's keys (or one key) may use, among ``names`` (the active models);
    none ticked = every model."""

    models = forms.MultipleChoiceField(choices=(), required=False, widget=forms.CheckboxSelectMultiple,
                                       label="Allowed models")

    def __init__(self, *args, names: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["models"].choices = [(name, name) for name in names]


class InvitationCreateForm(forms.Form):
    """Invite an e-mail address with a role among ``roles`` (whether it has an account or not)."""

    email = forms.EmailField(max_length=254, label="E-mail")
    role = forms.ChoiceField(choices=())

    def __init__(self, *args, roles: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = [(r, Membership.Role(r).label) for r in roles]
        self.fields["role"].initial = Membership.Role.MEMBER


class InvitationSignUpForm(UserCreationForm):
    """A new account for the invited address (``email``, fixed by the invitation): username and
    password twice, checked by ``AUTH_PASSWORD_VALIDATORS``. A taken username or an address that
    already has an account get one answer, which says neither (whoever holds the link, the inviter
    included, learns nothing about other accounts): sign in instead, or choose another username."""

    UNAVAILABLE = ("This account cannot be created. If you already have an account, sign in to accept; "
                   "otherwise choose another username.")

    def __init__(self, *args, email: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.instance.email = email

    def clean_username(self):
        username = self.cleaned_data.get("username")
        if username and get_user_model().objects.filter(username__iexact=username).exists():
            raise forms.ValidationError(self.UNAVAILABLE, code="unavailable")
        return username

    def clean(self):
        cleaned = super().clean()
        if get_user_model().objects.filter(email__iexact=self.instance.email).exists():
            raise forms.ValidationError(self.UNAVAILABLE, code="unavailable")
        return cleaned


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=())

    def __init__(self, *args, roles: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = [(r, Membership.Role(r).label) for r in roles]
