"""Project-level views: liveness and readiness, and error pages that speak OpenAI's envelope under /v1."""
import logging
import threading
import time

import redis
from django.conf import settings
from django.db import DatabaseError, connection
from django.http import JsonResponse
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt

from . import heartbeats
from .database import pending_migrations

from .errors import error_response, server_error_message
from .metrics import metrics_access_allowed
from .middleware import API_PREFIX
from .redis_outage import redis_outage


@csrf_exempt  # an API answer (no cookie, no state): a POST must get the envelope, not the CSRF page
def v1_not_found(request, *args, **kwargs):
    """Any unknown ``/v1/...`` URL: 404 in the envelope (OpenAI: ``Invalid URL (POST /v1/x)``)."""
    return error_response(f"Invalid URL ({request.method} {request.path})", status=404, code="unknown_url")


def not_found(request, exception=None):
    """``handler404``: the envelope under /v1, Django's page elsewhere."""
    if request.path.startswith(API_PREFIX):
        return v1_not_found(request)
    return defaults.page_not_found(request, exception)


def bad_request(request, exception=None):
    """``handler400`` (Django's answer to ``SuspiciousOperation`` raised before or outside a view:
    a ``Host`` not in ``ALLOWED_HOSTS``, too many fields, a body over Django's limits): the
    envelope under /v1, Django's page elsewhere. The message names the kind of fault, never
    the offending value."""
    if request.path.startswith(API_PREFIX):
        from django.core.exceptions import DisallowedHost

        if isinstance(exception, DisallowedHost):
            message, code = "The Host header of the request is not one this server answers to.", "invalid_host"
        else:
            message, code = "Bad request.", "bad_request"
        return error_response(message, status=400, code=code)
    return defaults.bad_request(request, exception)


def permission_denied(request, exception=None):
    """``handler403`` (e.g. a CSRF failure): the envelope under /v1, Django's page elsewhere."""
    if request.path.startswith(API_PREFIX):
        return error_response("Forbidden.", status=403, code="permission_denied")
    return defaults.permission_denied(request, exception)


def server_error(request):
    """``handler500``: the envelope (with the request id) under /v1, Django's page elsewhere."""
    if request.path.startswith(API_PREFIX):
        request_id = getattr(request, "request_id", "unknown")
        return error_response(server_error_message(request_id), status=500, type="server_error",
                              code="internal_error")
    return defaults.server_error(request)


def healthz(request):
    """Liveness: 200 ``{"status": "ok"}`` whenever the process answers (touches nothing else)."""
    return JsonResponse({"status": "ok"})


logger = logging.getLogger(__name__)
_migrated = False  # once true it stays true for this process (a new release restarts processes)


def _check_database() -> dict:
    global _migrated
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        if not _migrated:
            pending = pending_migrations()
            if pending is None:
                return {"ok": False, "error": "unreachable"}
            if pending:
                return {"ok": False, "error": f"{len(pending)} migrations not applied"}
            _migrated = True
        return {"ok": True}
    except DatabaseError as exc:
        return {"ok": False, "error": f"unreachable: {exc.__class__.__name__}"}


def _check_redis() -> dict:
    """PING ``REDIS_URL``; the answer also ends (or starts) a logged outage (`config.redis_outage`)."""
    try:
        heartbeats.client().ping()
    except redis.RedisError as exc:
        redis_outage().failed("readyz", exc)
        return {"ok": False, "error": f"unreachable: {exc.__class__.__name__}"}
    redis_outage().succeeded()
    return {"ok": True}


_warming = threading.Lock()


def _warm_in_background() -> None:
    """Load the active models in a thread (once at a time), so a model registered after this
    process started becomes ready without a request paying for the load."""
    from embeddings.services import warm_up

    def run():
        from django.db import connections

        try:
            warm_up()
        except Exception:  # noqa: BLE001 - readiness keeps reporting the model missing
            logger.exception("readyz: loading the active models failed")
        finally:
            connections.close_all()  # this thread's connection
            _warming.release()

    if _warming.acquire(blocking=False):
        threading.Thread(target=run, name="readyz-warm-up", daemon=True).start()


def _check_models() -> dict:
    """Where this process encodes (``EMBEDDINGS_INLINE_MAX_TOKENS > 0``): every active model's
    weights are loaded here (a missing one starts loading in the background; not ready until
    it is). Elsewhere the check passes with ``encodes_here: false``."""
    from embeddings.serving.engine import loaded_engines
    from embeddings.selectors import embedding_models_active
    from embeddings.services import engines_run_here

    if not engines_run_here():
        return {"ok": True, "encodes_here": False}
    loaded = {engine.path for engine in loaded_engines()}
    try:
        missing = [m.name for m in embedding_models_active() if m.local_path not in loaded]
    except DatabaseError:
        return {"ok": False, "encodes_here": True, "error": "cannot list the models"}
    if missing:
        _warm_in_background()
        return {"ok": False, "encodes_here": True, "error": f"not loaded: {', '.join(missing)}"}
    return {"ok": True, "encodes_here": True}


def _platform_state(redis_ok: bool, database_ok: bool) -> dict:
    """Workers alive per queue, beat, and the usage rollup's last run and lag (never fails)."""
    from metering.models import UsageRecord
    from billing.tasks import ROLLUP_JOB

    now = time.time()
    state: dict = {"workers": None, "beat": None, "rollup": None}
    if redis_ok:
        try:
            workers = heartbeats.workers_alive()
            state["workers"] = {"alive": len(workers),
                                "per_queue": heartbeats.per_queue(workers, settings.CELERY_PLATFORM_QUEUES),
                                "hostnames": sorted(w["hostname"] for w in workers)}
            beat = heartbeats.beat_state()
            state["beat"] = {"alive": beat is not None,
                             "last_seen_seconds_ago": round(now - beat["last_seen"], 1) if beat else None}
            last = heartbeats.job_last_run(ROLLUP_JOB)
            rollup = {"last_run_seconds_ago": round(now - last["finished_at"], 1) if last else None}
            if database_ok:
                # Lag: age of the oldest usage record no rollup run has seen yet (0: none waits);
                # before any run, of the oldest in the window beat's runs re-roll.
                since = last["started_at"] if last else now - settings.BILLING_ROLLUP_LOOKBACK_HOURS * 3600
                from datetime import UTC, datetime

                oldest = (UsageRecord.objects.filter(created_at__gte=datetime.fromtimestamp(since, UTC))
                          .order_by("created_at").values_list("created_at", flat=True).first())
                rollup["lag_seconds"] = round(now - oldest.timestamp(), 1) if oldest else 0.0
            state["rollup"] = rollup
        except (redis.RedisError, DatabaseError) as exc:
            logger.warning("readyz: platform state incomplete: %s", exc)
    return state


def readyz(request):
    """Readiness of this process: 200 when it can serve, else 503 naming the failed checks.

    Checks: ``database`` (reachable and fully migrated), ``redis`` (answers PING), ``models``
    (loaded here, where this process encodes). The body also reports, without affecting the
    status, the platform's state: workers alive per queue (`config.heartbeats`), beat, and the
    usage rollup's last run and lag in seconds. Those details (checks, worker host names, queues)
    only to whom may read ``/metrics`` (`config.metrics.metrics_access_allowed`: loopback, or the
    metrics token); anyone else, a load balancer's probe for one, gets ``status`` and ``failed``.
    """
    checks = {"database": _check_database(), "redis": _check_redis()}
    checks["models"] = _check_models() if checks["database"]["ok"] else {"ok": False, "error": "no database"}
    failed = [name for name, check in checks.items() if not check["ok"]]
    body = {"status": "not_ready" if failed else "ready", "failed": failed}
    if metrics_access_allowed(request.META):
        body.update(checks=checks, platform=_platform_state(checks["redis"]["ok"], checks["database"]["ok"]))
    return JsonResponse(body, status=503 if failed else 200)


def admin_model_moved(request, rest: str, new: str):
    """A model the Django admin shows moved to another app (usage records ``billing`` ->
    ``metering``, limits ``accounts`` -> ``limits``): 301 from the old address to the new one,
    ``new`` as ``app_model`` (path re-escaped, query string kept)."""
    from urllib.parse import quote

    from django.http import HttpResponsePermanentRedirect
    from django.urls import reverse

    target = reverse(f"admin:{new}_changelist") + quote(rest, safe="/")
    query = request.META.get("QUERY_STRING")
    return HttpResponsePermanentRedirect(f"{target}?{query}" if query else target)
