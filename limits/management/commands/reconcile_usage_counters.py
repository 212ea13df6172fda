"""``manage.py reconcile_usage_counters [--org ORG] [--month YYYY-MM] [--dry-run]``.

Rebuilds the monthly token counters of the admission store (Redis, or this process in the
embedded default) from `billing.UsageRecord`, the source of truth, and prints one line per
counter: its value before, the database sum, the tokens reserved in flight, its value after.
Reservations in flight are kept (see `limits.admission.admission_reconcile`).
"""
from datetime import datetime, timezone

from django.core.management.base import BaseCommand, CommandError

from limits.admission import admission_reconcile
from limits.scopes import Scope
from limits.store import AdmissionUnavailable
from config.periods import month_bounds
from accounts.models import Organization


class Command(BaseCommand):
    help = "Rebuild the monthly usage counters (quotas) from the usage records and show what changed."

    def add_arguments(self, parser):
        parser.add_argument("--org", help="Only this organization (name or public id).")
        parser.add_argument("--month", help="YYYY-MM (UTC); default: the current month.")
        parser.add_argument("--dry-run", action="store_true", help="Show what would change; write nothing.")

    def handle(self, *args, org, month, dry_run, **options):
        now = datetime.now(timezone.utc)
        if month:
            try:
                now = datetime.strptime(month, "%Y-%m").replace(tzinfo=timezone.utc)
            except ValueError:
                raise CommandError(f"Invalid --month {month!r}: use YYYY-MM.") from None
        start, end = month_bounds(now)
        organizations = Organization.objects.prefetch_related("projects").order_by("name")
        if org:
            organizations = organizations.filter(public_id=org) | organizations.filter(name__iexact=org)
            if not organizations:
                raise CommandError(f"No organization named {org!r}.")
        changed = total = 0
        self.stdout.write(f"Monthly counters for {start:%Y-%m} (UTC){' (dry run)' if dry_run else ''}:")
        self.stdout.write(f"{'scope':<44} {'before':>12} {'database':>12} {'in flight':>10} {'after':>12}")
        try:
            for organization in organizations:
                scopes = [(Scope("organization", organization.pk, organization.public_id), organization.name)]
                scopes += [(Scope("project", p.pk, p.public_id), f"{organization.name}/{p.name}")
                           for p in organization.projects.all()]
                for scope, name in scopes:
                    row = admission_reconcile(scope=scope, month_start=start, month_end=end, dry_run=dry_run)
                    total += 1
                    changed += row.changed
                    before = "missing" if row.before is None else f"{row.before:,}"
                    mark = "  changed" if row.changed else ""
                    self.stdout.write(f"{scope.kind[:4] + ' ' + name:<44} {before:>12} {row.database:>12,} "
                                      f"{row.in_flight:>10,} {row.after:>12,}{mark}")
        except AdmissionUnavailable as exc:
            raise CommandError(f"The admission store is unreachable: {exc}") from None
        verb = "would change" if dry_run else "changed"
        self.stdout.write(f"{total} counters, {changed} {verb}.")
