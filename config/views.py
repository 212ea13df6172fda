"""Project-level views: health check, and error pages that speak OpenAI's envelope under /v1."""
from django.db import connection
from django.http import JsonResponse
from django.views import defaults

from .errors import error_response
from .middleware import API_PREFIX


def v1_not_found(request, *args, **kwargs):
    """Any unknown ``/v1/...`` URL: 404 in the envelope (OpenAI: ``Invalid URL (POST /v1/x)``)."""
    return error_response(f"Invalid URL ({request.method} {request.path})", status=404, code="unknown_url")


def not_found(request, exception=None):
    """``handler404``: the envelope under /v1, Django's page elsewhere."""
    if request.path.startswith(API_PREFIX):
        return v1_not_found(request)
    return defaults.page_not_found(request, exception)


def server_error(request):
    """``handler500``: the envelope (with the request id) under /v1, Django's page elsewhere."""
    if request.path.startswith(API_PREFIX):
        request_id = getattr(request, "request_id", "unknown")
        return error_response(f"The server had an error while processing your request. (Request ID: {request_id})",
                              status=500, type="server_error", code="internal_error")
    return defaults.server_error(request)


def healthz(request):
    """Liveness/readiness: 200 ``{"status": "ok"}`` when the database answers."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})
