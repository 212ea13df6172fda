"""Calendar periods shared by admission (monthly quotas) and billing (monthly statements)."""
from __future__ import annotations

from datetime import UTC, date, datetime


def month_bounds(moment: date | datetime) -> tuple[datetime, datetime]:
    """The calendar month (UTC) holding ``moment``: ``(first instant, first instant of the next
    month)``, both aware UTC datetimes (end exclusive). A ``date`` is read as that day in UTC; an
    aware ``datetime`` is converted to UTC first."""
    if isinstance(moment, datetime):
        moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    end = datetime(moment.year + (moment.month == 12), moment.month % 12 + 1, 1, tzinfo=UTC)
    return start, end
