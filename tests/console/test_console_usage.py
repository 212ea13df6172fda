"""The usage page's data: the per-day selector (on whichever database runs the suite), the
server-side chart layout, the date-range filter, and the quota bar partial on plain data."""
from __future__ import annotations

import datetime as dt

import pytest
from django.template.loader import render_to_string
from django.test import Client
from django.urls import reverse

from accounts.models import Membership
from accounts.services import api_key_create, membership_add, organization_get_or_create, project_get_or_create
from console.charts import OTHER_LABEL, PALETTE, daily_stacked_bars, nice_step
from console.templatetags.console import human_count, percent_of
from metering.models import UsageRecord
from billing.selectors import DELETED_KEY_LABEL, DailyUsage, usage_daily, usage_recent
from embeddings.services import embedding_model_register

UTC = dt.UTC
D1, D2, D3 = dt.date(2026, 3, 1), dt.date(2026, 3, 2), dt.date(2026, 3, 3)


@pytest.fixture
def usage(db, default_model):
    """Acme (two projects, two keys, two models) and Bravo, with records around day boundaries."""
    other_model = embedding_model_register(name="second-model", path=default_model.local_path)
    acme, bravo = organization_get_or_create(name="Acme"), organization_get_or_create(name="Bravo")
    main, side = project_get_or_create(organization=acme, name="Main"), project_get_or_create(organization=acme,
                                                                                           name="Side")
    b_project = project_get_or_create(organization=bravo, name="Main")
    k_main = api_key_create(project=main, name="main-key").api_key
    k_side = api_key_create(project=side, name="").api_key
    k_gone = api_key_create(project=main, name="gone").api_key
    k_bravo = api_key_create(project=b_project, name="b").api_key
    n = iter(range(1000))

    def record(project, key, model, when, tokens):
        UsageRecord.objects.create(request_id=f"req_{next(n)}", organization=project.organization, project=project,
                                   api_key=key, model=model, input_count=2, prompt_tokens=tokens,
                                   total_tokens=tokens, latency_ms=3, created_at=when)

    record(main, k_main, default_model, dt.datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC), 1000)  # before
    record(main, k_main, default_model, dt.datetime(2026, 3, 1, 0, 0, 0, tzinfo=UTC), 10)
    record(main, k_main, default_model, dt.datetime(2026, 3, 1, 12, 0, tzinfo=UTC), 20)
    record(side, k_side, other_model, dt.datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC), 5)
    record(main, k_gone, default_model, dt.datetime(2026, 3, 2, 8, 0, tzinfo=UTC), 7)
    record(main, k_main, other_model, dt.datetime(2026, 3, 3, 23, 59, 59, tzinfo=UTC), 3)
    record(main, k_main, default_model, dt.datetime(2026, 3, 4, 0, 0, 0, tzinfo=UTC), 2000)  # after
    record(b_project, k_bravo, default_model, dt.datetime(2026, 3, 2, 9, 0, tzinfo=UTC), 999)  # other tenant
    k_gone.delete()
    return dict(acme=acme, main=main, side=side, k_main=k_main, k_side=k_side, model=default_model,
                other_model=other_model)


def test_usage_per_day_per_model_counts_the_range_inclusively_and_only_the_tenant(usage):
    rows = usage_daily(organization=usage["acme"], start=D1, end=D3, group_by="model")
    assert [(r.day, r.series, r.requests, r.inputs, r.total_tokens) for r in rows] == [
        (D1, "all-MiniLM-L6-v2", 2, 4, 30),
        (D1, "second-model", 1, 2, 5),
        (D2, "all-MiniLM-L6-v2", 1, 2, 7),
        (D3, "second-model", 1, 2, 3),
    ]
    one_project = usage_daily(organization=usage["acme"], project=usage["side"], start=D1, end=D3)
    assert [(r.day, r.series, r.total_tokens) for r in one_project] == [(D1, "second-model", 5)]


def test_usage_per_day_per_key_labels_keys_masked_and_deleted_ones(usage):
    rows = usage_daily(organization=usage["acme"], start=D1, end=D3, group_by="key")
    k_main, k_side = usage["k_main"], usage["k_side"]
    assert [(r.day, r.series, r.label, r.total_tokens) for r in rows] == sorted([
        (D1, k_main.public_id, f"main-key ({k_main.masked})", 30),
        (D1, k_side.public_id, k_side.masked, 5),
        (D2, DELETED_KEY_LABEL, DELETED_KEY_LABEL, 7),
        (D3, k_main.public_id, f"main-key ({k_main.masked})", 3),
    ], key=lambda r: (r[0], r[1] != k_main.public_id and r[1] != k_side.public_id, r[1]))
    with pytest.raises(ValueError):
        usage_daily(organization=usage["acme"], start=D1, end=D3, group_by="user")


def test_recent_requests_are_newest_first_within_the_range(usage):
    recent = usage_recent(organization=usage["acme"], start=D1, end=D3, limit=3)
    assert [r.total_tokens for r in recent] == [3, 7, 5]


def test_chart_stacks_series_per_day_on_a_nice_axis():
    rows = [DailyUsage(D1, "a", "A", 1, 1, 6), DailyUsage(D1, "b", "B", 1, 1, 3), DailyUsage(D3, "a", "A", 1, 1, 2)]
    chart = daily_stacked_bars(rows, start=D1, end=D3, humanize=human_count)
    assert [t.label for t in chart.y_ticks] == ["0", "2", "4", "6", "8", "10"]
    assert chart.legend == [(PALETTE[0], "A"), (PALETTE[1], "B")] and chart.total_tokens == 11
    day1 = [r for r in chart.rects if r.x == chart.rects[0].x]
    assert len(day1) == 2 and len(chart.rects) == 3  # day 2 has no bar
    plot_height = chart.plot_bottom - chart.y_ticks[-1].position
    a1, b1 = day1
    assert a1.height == pytest.approx(plot_height * 6 / 10, abs=0.01)
    assert b1.height == pytest.approx(plot_height * 3 / 10, abs=0.01)
    assert a1.y + a1.height == pytest.approx(chart.plot_bottom, abs=0.01)  # stacked from the baseline
    assert b1.y + b1.height == pytest.approx(a1.y, abs=0.01)
    assert "2026-03-01 · A: 6 tokens" == a1.title


def test_chart_folds_small_series_into_other_and_handles_no_data():
    rows = [DailyUsage(D1, f"s{i}", f"S{i}", 1, 1, 100 - i) for i in range(len(PALETTE) + 2)]
    chart = daily_stacked_bars(rows, start=D1, end=D1)
    assert len(chart.legend) == len(PALETTE) + 1 and chart.legend[-1][1] == OTHER_LABEL
    assert len(chart.rects) == len(PALETTE) + 1
    empty = daily_stacked_bars([], start=D1, end=D3)
    assert empty.rects == [] and empty.legend == [] and [t.value for t in empty.y_ticks] == [0, 1]
    assert [nice_step(v) for v in (0, 9, 11, 99, 12_300_000)] == [1, 2, 5, 20, 5_000_000]


@pytest.mark.parametrize("value, text", [
    (0, "0"), (950, "950"), (1000, "1K"), (1500, "1.5K"), (999_960, "1M"), (12_300_000, "12.3M"),
    (50_000_000, "50M"), (2_500_000_000, "2.5B"), (-1500, "-1.5K"), (None, ""), ("n/a", ""),
])
def test_human_count(value, text):
    assert human_count(value) == text


def test_percent_of_is_clamped():
    assert [percent_of(12_300_000, 50_000_000), percent_of(60, 50), percent_of(5, 0), percent_of(5, None)] == \
        [24, 100, 0, 0]


def test_limit_bar_partial_renders_plain_data():
    html = render_to_string("console/_limit_bar.html", {"bar": {
        "label": "Monthly tokens", "used": 12_300_000, "limit": 50_000_000, "unit": "tokens", "period": "this month",
        "resets_at": dt.datetime(2026, 4, 1, tzinfo=UTC)}})
    assert "12.3M of 50M tokens this month" in html
    assert '<rect class="limit-fill" width="24%"' in html and 'aria-valuenow="12300000"' in html
    assert "Resets Apr 1, 00:00 UTC" in html and "limit-warn" not in html
    warn = render_to_string("console/_limit_bar.html", {"bar": {"label": "RPM", "used": 90, "limit": 100,
                                                                "unit": "requests", "period": "per minute"}})
    assert "90 of 100 requests per minute" in warn and "limit-warn" in warn
    full = render_to_string("console/_limit_bar.html", {"bar": {"label": "TPM", "used": 150_000, "limit": 100_000,
                                                                "unit": "tokens", "period": "per minute"}})
    assert "limit-full" in full and 'width="100%" height="100%"' in full
    unlimited = render_to_string("console/_limit_bar.html", {"bar": {"label": "Monthly tokens", "used": 1500,
                                                                     "limit": None, "unit": "tokens"}})
    assert "1.5K tokens · no limit" in unlimited and "progressbar" not in unlimited
    panel = render_to_string("console/_limit_bars.html", {"limit_bars": []})
    assert panel.strip() == ""


def test_usage_page_filters_and_refuses_bad_ranges(usage, django_user_model):
    user = django_user_model.objects.create_user(username="u", password="x-long-password-1")
    membership_add(organization=usage["acme"], user=user, role=Membership.Role.READER)
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    url = reverse("console:usage", kwargs={"org": usage["acme"].public_id})
    page = client.get(url, {"start": "2026-03-01", "end": "2026-03-03", "group_by": "model",
                            "project": usage["main"].public_id})
    assert page.status_code == 200
    assert page.context["total_tokens"] == 10 + 20 + 7 + 3 and page.context["total_requests"] == 4
    assert len(page.context["chart"].rects) == 3
    for bad, message in [({"start": "2026-03-05", "end": "2026-03-01"}, "The start date is after the end date."),
                         ({"start": "2024-01-01", "end": "2026-03-01"}, "Choose at most 366 days."),
                         ({"start": "yesterday"}, "Enter a valid date."),
                         ({"start": "9999-12-31", "end": "9999-12-31"}, "Choose dates up to 9999-12-30."),
                         ({"project": "proj_not_mine"}, "Select a valid choice.")]:
        page = client.get(url, bad)
        assert page.status_code == 200 and message in page.content.decode(), bad
        assert page.context["filters"]["end"] == dt.datetime.now(UTC).date()  # fell back to the last 30 days
