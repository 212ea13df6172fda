"""``/console/platform/``: the "Platform status" page, for staff users only (everyone else: 403).

What an operator checks first, read from the same sources as ``/metrics`` (`config.platform_state`:
worker heartbeats, the broker's queues, beat, the usage rollup's last run and lag) plus the last
hour's successful requests and tokens from the usage records (what ``embeddings_tokens_total``
counts, across every host).
"""
from __future__ import annotations

from datetime import timedelta

from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Sum
from django.utils import timezone
from django.views.generic import TemplateView

from config.platform_state import platform_state
from metering.models import UsageRecord


def usage_last_hour() -> tuple[list[dict], int, int]:
    """``(rows, requests, tokens)`` of the usage records of the last hour: one row per model and
    service tier (``model``, ``service_tier``, ``requests``, ``inputs``, ``tokens``), largest first."""
    since = timezone.now() - timedelta(hours=1)
    rows = list(UsageRecord.objects.filter(created_at__gte=since)
                .values("model__name", "service_tier")
                .annotate(requests=Count("id"), inputs=Sum("input_count"), tokens=Sum("total_tokens"))
                .order_by("-tokens"))
    for row in rows:
        row["model"] = row.pop("model__name")
    return rows, sum(r["requests"] for r in rows), sum(r["tokens"] or 0 for r in rows)


class PlatformStatusView(LoginRequiredMixin, TemplateView):
    """Workers alive, queue depths and oldest message age, beat, requests and tokens in the last hour,
    rollup lag. Anonymous users are sent to sign in; signed-in users who are not staff get 403."""

    template_name = "console/platform_status.html"

    def dispatch(self, request, *args, **kwargs):
        if request.user.is_authenticated and not request.user.is_staff:
            raise PermissionDenied("Staff only.")
        return super().dispatch(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        import time

        context = super().get_context_data(**kwargs)
        state = platform_state()
        now = time.time()
        workers = sorted(state.workers or [], key=lambda w: w.get("hostname", ""))
        for worker in workers:
            worker["seen_ago"] = max(0.0, now - float(worker.get("last_seen", now)))
            worker["up_for"] = max(0.0, now - float(worker.get("started_at", now)))
        rows, requests, tokens = usage_last_hour()
        context.update(state=state, workers=workers, usage_rows=rows, requests_last_hour=requests,
                       tokens_last_hour=tokens,
                       rollup_seen_ago=None if state.rollup_last_run is None else now - state.rollup_last_run)
        return context
