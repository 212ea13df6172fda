"""The console's Content-Security-Policy (issue 11, item 7): every page sends it, it allows no
inline script or style, and no page needs one (no ``style=``, ``on*=`` or inline ``<script>``)."""
from __future__ import annotations

import datetime as dt
import re

from django.template.loader import render_to_string
from django.test import Client
from django.urls import reverse

from billing.selectors import DailyUsage
from console.charts import daily_stacked_bars
from limits.services import limit_set
from tests.console.conftest import signed_in, tenants  # noqa: F401 - the fixture

INLINE = re.compile(r"""\sstyle\s*=|\son[a-z]+\s*=|<script(?![^>]*\ssrc=)[^>]*>|<style[\s>]""", re.I)


def directives(response) -> dict[str, set[str]]:
    header = response["Content-Security-Policy"]
    return {name: set(values) for name, *values in (part.split() for part in header.split(";") if part.strip())}


def test_every_console_page_sends_a_strict_policy_and_needs_no_inline_code(tenants):  # noqa: F811
    t = tenants
    limit_set(organization=t["a_org"], monthly_tokens=1000, rpm=10)  # the quota bars are drawn
    org, project = t["a_org"].public_id, t["a_project"].public_id
    owner = signed_in(t["a_owner"])
    pages = [reverse(f"console:{name}", kwargs={"org": org}) for name in ("projects", "members", "usage", "admin-keys", "billing")]
    pages += [reverse("console:keys", kwargs={"org": org, "project": project}),
              reverse("console:key-revoke", kwargs={"org": org, "project": project, "key": t["a_key"].public_id})]
    responses = [owner.get(url) for url in pages] + [Client().get(reverse("console:login"))]
    for response in responses:
        assert response.status_code == 200, response
        policy = directives(response)
        for name in ("default-src", "script-src", "style-src"):
            assert policy[name] == {"'self'"}, (response.request["PATH_INFO"], name, policy)
        assert policy["frame-ancestors"] == {"'none'"} and policy["object-src"] == {"'none'"}
        html = response.content.decode()
        assert not INLINE.search(html), (response.request["PATH_INFO"], INLINE.search(html))
    assert "progressbar" in responses[0].content.decode()


def test_charts_and_bars_draw_without_style_attributes():
    bar = render_to_string("console/_limit_bar.html", {"bar": {"label": "RPM", "used": 9, "limit": 10,
                                                               "unit": "requests", "period": "per minute"}})
    assert '<rect class="limit-fill" width="90%"' in bar and not INLINE.search(bar)
    day = dt.date(2026, 10, 1)
    rows = [DailyUsage(day, "a", "A", 1, 1, 5), DailyUsage(day, "b", "B", 1, 1, 7)]
    chart = render_to_string("console/_bar_chart.html", {"chart": daily_stacked_bars(rows, start=day, end=day)})
    assert 'class="swatch"' in chart and not INLINE.search(chart)
