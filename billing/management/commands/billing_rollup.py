"""``manage.py billing_rollup [--start ISO] [--end ISO]``: (re)build hourly/daily usage rollups.

Without arguments: the beat task's run (the trailing ``BILLING_ROLLUP_LOOKBACK_HOURS``).
With a range: backfills, e.g. after records were imported with old timestamps.
"""
from datetime import UTC, datetime

from django.core.management.base import BaseCommand, CommandError

from billing.services import usage_rollup_build, usage_rollup_recent


def parse_time(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"Not an ISO date/time: {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = "Rebuild the hourly and daily usage rollups (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--start", help="ISO date/time (UTC when naive); rounded down to the hour.")
        parser.add_argument("--end", help="ISO date/time (UTC when naive); rounded up to the hour.")

    def handle(self, *args, start, end, **options):
        if bool(start) != bool(end):
            raise CommandError("--start and --end go together.")
        result = usage_rollup_build(start=parse_time(start), end=parse_time(end)) if start else usage_rollup_recent()
        self.stdout.write(f"Rolled up {result.hour_start:%Y-%m-%d %H:%M} .. {result.hour_end:%Y-%m-%d %H:%M} UTC: "
                          f"{result.hourly_rows} hourly rows, {result.daily_rows} daily rows.")
