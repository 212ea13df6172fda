"""Template filters of the console: human token counts and bar widths.

``{% load console %}`` then ``{{ 12300000|human_count }}`` -> ``12.3M`` and
``{{ used|percent_of:limit }}`` -> ``25`` (an int from 0 to 100, for a bar's width).
"""
from __future__ import annotations

from django import template

register = template.Library()

# Short scale, as OpenAI's and most dashboards' usage pages write token counts.
_UNITS = ((10**3, "K"), (10**6, "M"), (10**9, "B"), (10**12, "T"))


@register.filter
def human_count(value) -> str:
    """``950 -> "950"``, ``1500 -> "1.5K"``, ``12_300_000 -> "12.3M"``, ``50_000_000 -> "50M"``.

    One decimal, dropped when it is zero; a value that rounds up to the next unit is
    written in it (``999_960 -> "1M"``, not ``"1000K"``). ``None`` or non-numbers: ``""``.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        return ""
    sign = "-" if number < 0 else ""
    number = abs(number)
    if round(number, 1) < 1000:
        text = f"{round(number, 1):.1f}".rstrip("0").rstrip(".")
        return f"{sign}{text}"
    for size, suffix in _UNITS:
        scaled = round(number / size, 1)
        if scaled < 1000 or suffix == _UNITS[-1][1]:
            break
    text = f"{scaled:.1f}".rstrip("0").rstrip(".")
    return f"{sign}{text}{suffix}"


@register.filter
def percent_of(used, limit) -> int:
    """``used`` as a whole percentage of ``limit``, clamped to 0..100 (0 when there is no limit)."""
    try:
        used, limit = float(used), float(limit)
    except (TypeError, ValueError):
        return 0
    if limit <= 0:
        return 0
    return max(0, min(100, int(used * 100 // limit)))
