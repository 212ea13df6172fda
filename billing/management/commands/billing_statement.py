"""``manage.py billing_statement --org ORG --month YYYY-MM [--close] [--format csv|json]``.

Builds (or, with ``--close``, closes and freezes) the organization's statement for the
month and prints it on stdout as CSV (default) or JSON. A closed statement is printed
as stored.
"""
import json
from datetime import date

from django.core.management.base import BaseCommand, CommandError

from accounts.models import Organization
from billing.exports import statement_export_csv, statement_export_json
from billing.models import Statement
from billing.services import statement_build, statement_close
from config.errors import APIError


class Command(BaseCommand):
    help = "Build/close an organization's monthly statement and export it as CSV or JSON."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="Organization name or public id (org_...).")
        parser.add_argument("--month", required=True, help="YYYY-MM (UTC).")
        parser.add_argument("--close", action="store_true", help="Close (freeze) the month; it must have ended.")
        parser.add_argument("--format", choices=["csv", "json"], default="csv")

    def handle(self, *args, org, month, close, format, **options):
        organization = (Organization.objects.filter(public_id=org).first()
                        or Organization.objects.filter(name__iexact=org).first())
        if organization is None:
            raise CommandError(f"No organization {org!r}.")
        try:
            year, mon = (int(part) for part in month.split("-"))
            period = date(year, mon, 1)
        except ValueError:
            raise CommandError(f"--month must be YYYY-MM, got {month!r}.") from None
        try:
            if close:
                statement = statement_close(organization=organization, period_start=period)
            else:
                existing = Statement.objects.filter(organization=organization, period_start=period).first()
                statement = existing if existing and existing.status == Statement.Status.CLOSED else \
                    statement_build(organization=organization, period_start=period)
        except APIError as exc:
            raise CommandError(exc.message) from None
        if format == "json":
            self.stdout.write(json.dumps(statement_export_json(statement), indent=2))
        else:
            self.stdout.write(statement_export_csv(statement), ending="")
        self.stderr.write(f"{statement}: total {statement.total_amount} {statement.currency}")
