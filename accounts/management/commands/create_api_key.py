"""``manage.py create_api_key --org ORG --project PROJECT [--name NAME]``.

Creates the organization and project when missing and prints the new plaintext
key alone on stdout (so ``KEY=$(python manage.py create_api_key ...)`` works).
"""
from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.services import api_key_create, organization_get_or_create, project_get_or_create


class Command(BaseCommand):
    help = "Create an API key (and its organization/project when missing); prints the key alone on stdout."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="Organization name (created when missing).")
        parser.add_argument("--project", required=True, help="Project name (created when missing).")
        parser.add_argument("--name", default="", help="A label for the key.")

    def handle(self, *args, org, project, name, **options):
        with transaction.atomic():
            organization = organization_get_or_create(name=org)
            proj = project_get_or_create(organization=organization, name=project)
            created = api_key_create(project=proj, name=name)
        self.stderr.write(
            f"Created key {created.api_key.public_id} for {organization.public_id}/{proj.public_id} "
            "(shown once; store it now)."
        )
        self.stdout.write(created.plaintext)
