"""``manage.py create_api_key --org ORG (--project PROJECT | --admin) [--name NAME]``.

Creates the organization (and project) when missing and prints the new plaintext
key alone on stdout (so ``KEY=$(python manage.py create_api_key ...)`` works).
With ``--admin`` the key is an organization admin key (``sk-admin-...``) for the
``/v1/organization/...`` usage and costs API; it cannot call ``/v1/embeddings``.
"""
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.services import admin_api_key_create, api_key_create, organization_get_or_create, project_get_or_create


class Command(BaseCommand):
    help = ("Create a project API key (--project) or an organization admin key (--admin), creating the "
            "organization/project when missing; prints the key alone on stdout.")

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="Organization name (created when missing).")
        parser.add_argument("--project", help="Project name (created when missing); not with --admin.")
        parser.add_argument("--admin", action="store_true", help="Create an organization admin key (sk-admin-).")
        parser.add_argument("--name", default="", help="A label for the key.")

    def handle(self, *args, org, project, admin, name, **options):
        if admin == bool(project):
            raise CommandError("Give exactly one of --project PROJECT or --admin.")
        with transaction.atomic():
            organization = organization_get_or_create(name=org)
            if admin:
                created = admin_api_key_create(organization=organization, name=name)
                row, owner = created.admin_api_key, organization.public_id
            else:
                proj = project_get_or_create(organization=organization, name=project)
                created = api_key_create(project=proj, name=name)
                row, owner = created.api_key, f"{organization.public_id}/{proj.public_id}"
        kind = "admin key" if admin else "key"
        self.stderr.write(f"Created {kind} {row.public_id} for {owner} (shown once; store it now).")
        self.stdout.write(created.plaintext)
