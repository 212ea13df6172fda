"""A stacked bar chart of tokens per day, laid out server-side for an inline SVG.

Pure geometry, no HTTP and no database: `daily_stacked_bars` turns `DailyUsage` rows
into rectangles, axis ticks and a legend that ``templates/console/_bar_chart.html``
draws. No JavaScript and no CDN: the page works as it is served.
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

# Okabe & Ito's colour-blind-safe palette (Nature Methods 8, 441 (2011)), then grey for "Other".
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
OTHER_COLOR = "#999999"
OTHER_LABEL = "Other"

WIDTH, HEIGHT = 1000, 260  # SVG user units (px; the page is about this wide, so text keeps its size)
LEFT, RIGHT, TOP, BOTTOM = 56, 8, 10, 28


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    width: float
    height: float
    color: str
    title: str  # the tooltip: day, series, tokens


@dataclass(frozen=True)
class Tick:
    position: float
    value: int
    label: str


@dataclass
class Chart:
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    plot_bottom: float = HEIGHT - BOTTOM
    plot_right: float = WIDTH - RIGHT
    rects: list[Rect] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)  # (color, label)
    total_tokens: int = 0


def nice_step(value: float, *, intervals: int = 5) -> int:
    """The smallest 1, 2 or 5 x 10^k (an int >= 1) that covers ``value`` in at most
    ``intervals`` steps: the y axis' tick step (9 -> 2: ticks 0, 2, ..., 10)."""
    if value <= intervals:
        return 1
    target = value / intervals
    magnitude = 10 ** int(math.floor(math.log10(target)))
    for multiple in (1, 2, 5, 10):
        if multiple * magnitude >= target:
            return multiple * magnitude
    return 10 * magnitude


def daily_stacked_bars(rows, *, start: dt.date, end: dt.date, max_series: int = len(PALETTE),
                       humanize=str) -> Chart:
    """Lay out one bar per day from ``start`` to ``end`` (both included), stacked by series.

    ``rows``: `billing.selectors.DailyUsage` (day, series, label, total_tokens). The
    ``max_series`` series with the most tokens keep a colour of their own; the rest are
    summed into "Other". ``humanize`` formats axis labels (e.g. ``12300000 -> "12.3M"``).
    """
    days = [start + dt.timedelta(days=n) for n in range((end - start).days + 1)]
    totals: dict[str, int] = {}
    labels: dict[str, str] = {}
    for row in rows:
        totals[row.series] = totals.get(row.series, 0) + row.total_tokens
        labels[row.series] = row.label
    ranked = sorted(totals, key=lambda s: (-totals[s], labels[s]))
    kept = ranked[:max_series] if len(ranked) > max_series else ranked
    colors = {series: PALETTE[n] for n, series in enumerate(kept)}

    stacks: dict[dt.date, dict[str, int]] = {day: {} for day in days}
    for row in rows:
        if row.day not in stacks:
            continue
        series = row.series if row.series in colors else OTHER_LABEL
        stacks[row.day][series] = stacks[row.day].get(series, 0) + row.total_tokens

    chart = Chart()
    chart.legend = [(colors[s], labels[s]) for s in kept]
    if len(ranked) > len(kept):
        chart.legend.append((OTHER_COLOR, OTHER_LABEL))
    chart.total_tokens = sum(totals.values())
    peak = max((sum(stack.values()) for stack in stacks.values()), default=0)
    step = nice_step(peak)
    intervals = max(1, math.ceil(peak / step))
    top = step * intervals
    plot_height = chart.plot_bottom - TOP
    plot_width = chart.plot_right - LEFT
    slot = plot_width / len(days)
    bar_width = max(1.0, slot * 0.7)
    for index, day in enumerate(days):
        x = LEFT + index * slot + (slot - bar_width) / 2
        y = chart.plot_bottom
        for series in [*kept, OTHER_LABEL]:
            tokens = stacks[day].get(series, 0)
            if not tokens:
                continue
            height = plot_height * tokens / top
            y -= height
            label = labels.get(series, OTHER_LABEL)
            chart.rects.append(Rect(x=round(x, 2), y=round(y, 2), width=round(bar_width, 2),
                                    height=round(height, 2), color=colors.get(series, OTHER_COLOR),
                                    title=f"{day.isoformat()} · {label}: {tokens:,} tokens"))
    chart.y_ticks = [Tick(position=round(chart.plot_bottom - plot_height * n / intervals, 2), value=step * n,
                          label=humanize(step * n)) for n in range(intervals + 1)]
    every = max(1, math.ceil(len(days) / 10))  # at most ~10 day labels
    chart.x_ticks = [Tick(position=round(LEFT + (i + 0.5) * slot, 2), value=i, label=day.strftime("%b %d"))
                     for i, day in enumerate(days) if i % every == 0]
    return chart
