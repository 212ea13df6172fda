"""Fixtures of the console tests: two tenants with owners, a reader and a member."""
from __future__ import annotations

import pytest
from django.test import Client

from accounts.models import Membership
from accounts.services import api_key_create, membership_add, organization_get_or_create, project_get_or_create

PASSWORD = "a-long-test-password-42"
Role = Membership.Role


@pytest.fixture
def tenants(db, django_user_model):
    """Two organizations, each with a project, a key and an owner; Acme also has a reader and a member."""
    def tenant(name, owner_name):
        organization = organization_get_or_create(name=name)
        owner = django_user_model.objects.create_user(username=owner_name, password=PASSWORD)
        membership_add(organization=organization, user=owner, role=Role.OWNER)
        project = project_get_or_create(organization=organization, name="Main")
        key = api_key_create(project=project, name="main", created_by=owner).api_key
        return organization, owner, project, key

    a_org, a_owner, a_project, a_key = tenant("Acme", "alice")
    b_org, b_owner, b_project, b_key = tenant("Bravo", "bob")
    reader = django_user_model.objects.create_user(username="rita", password=PASSWORD)
    membership_add(organization=a_org, user=reader, role=Role.READER)
    member = django_user_model.objects.create_user(username="mike", password=PASSWORD)
    membership_add(organization=a_org, user=member, role=Role.MEMBER)
    return dict(a_org=a_org, a_owner=a_owner, a_project=a_project, a_key=a_key, reader=reader, member=member,
                b_org=b_org, b_owner=b_owner, b_project=b_project, b_key=b_key)


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    return client
