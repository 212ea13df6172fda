"""The HTTP edge of limits: the DRF view mixin that puts the ``x-ratelimit-*`` headers on responses."""
from __future__ import annotations

from accounts.selectors import ResolvedKey

from .admission import admission_peek_headers


class RateLimitHeadersMixin:
    """For DRF views that admit requests: put the ``x-ratelimit-*`` headers on every response
    after authentication: those of the reservation (``request.reservation``) or of the 429;
    for a response that ended before admission (e.g. a 400), the current state, unconsumed.
    Responses to unauthenticated requests carry none (there is no key to report on)."""

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if response.has_header("x-ratelimit-limit-requests"):
            return response
        reservation = getattr(request, "reservation", None)
        if reservation is not None:
            headers = reservation.headers
        else:
            key = getattr(request, "_auth", None)  # set by DRF once authentication ran
            if not isinstance(key, ResolvedKey) or response.status_code in (401, 503):
                return response
            headers = admission_peek_headers(key=key)
        for name, value in headers.items():
            response[name] = value
        return response
