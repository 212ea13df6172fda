"""`config.periods.month_bounds`: the one calendar-month rule of quotas and statements."""
from datetime import UTC, date, datetime, timedelta, timezone

from config.periods import month_bounds


def test_month_bounds_for_dates_datetimes_and_december():
    assert month_bounds(date(2026, 10, 1)) == (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
    assert month_bounds(date(2026, 12, 31)) == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert month_bounds(datetime(2026, 11, 30, 23, 59, tzinfo=UTC))[1] == datetime(2026, 12, 1, tzinfo=UTC)
    # 00:30 on Dec 1 at UTC+2 is still November in UTC
    east = timezone(timedelta(hours=2))
    assert month_bounds(datetime(2026, 12, 1, 0, 30, tzinfo=east))[0] == datetime(2026, 11, 1, tzinfo=UTC)
