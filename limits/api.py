"""The HTTP edge of limits: the DRF view mixin that puts the ``x-ratelimit-*`` headers on responses."""
from __future__ import annotations

from rest_framework.exceptions import APIException

from accounts.selectors import ResolvedKey
from config.errors import APIError, api_error_from_domain

from .admission import admission_charge_rejected

# Refusals that are not counted toward RPM: 401 (no key to count), 429 (admission itself
# refused: its headers are on it already).
_NOT_CHARGED = (401, 429)


def _client_error(exc) -> bool:
    exc = api_error_from_domain(exc) or exc
    status = exc.status_code if isinstance(exc, (APIError, APIException)) else None
    return status is not None and 400 <= status < 500 and status not in _NOT_CHARGED


class RateLimitHeadersMixin:
    """For DRF views that admit requests: put the ``x-ratelimit-*`` headers on every response
    after authentication: those of the reservation (``request.reservation``) or of the 429.

    A request refused before admission with a 4xx (invalid body, unknown model, input over the
    model's limits) is counted toward the key's RPM limits (`admission_charge_rejected`, the one
    store call such a response makes anyway): once a limit is reached the answer is the 429
    instead. Responses to unauthenticated requests carry none (there is no key to report on)."""

    def handle_exception(self, exc):
        request = self.request
        key = getattr(request, "_auth", None)  # set by DRF once authentication ran
        if (isinstance(key, ResolvedKey) and getattr(request, "reservation", None) is None
                and _client_error(exc)):
            try:
                request.ratelimit_headers = admission_charge_rejected(key=key)
            except APIError as limited:  # an RPM limit is reached: 429 instead of the refusal
                exc = limited
        return super().handle_exception(exc)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if response.has_header("x-ratelimit-limit-requests"):
            return response
        reservation = getattr(request, "reservation", None)
        headers = reservation.headers if reservation is not None else getattr(request, "ratelimit_headers", {})
        for name, value in headers.items():
            response[name] = value
        return response
