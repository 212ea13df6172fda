"""OpenAI's answers about limits: the ``x-ratelimit-*`` headers of a bucket state, and the 429
(`RateLimitError`) and 503 (store down) errors with their wording and retry headers."""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone as dt_timezone

from django.conf import settings

from config.errors import RateLimitError, ServiceUnavailableError

from .checks import Check
from .store import PERIOD_MS

# ---------------------------------------------------------------------------------------------------
# Headers (OpenAI's x-ratelimit-* set) and errors.
# ---------------------------------------------------------------------------------------------------

def go_duration(ms: float) -> str:
    """A duration as OpenAI writes ``x-ratelimit-reset-*`` (Go's format): ``0s``, ``250ms``, ``1s``,
    ``1.5s``, ``6m0s``, ``1h2m3s``."""
    ms = max(0, math.ceil(ms))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


@dataclass(frozen=True)
class BucketState:
    """A bucket after the step: its check, the units in it (0 = full capacity left)."""

    check: Check
    level: float

    @property
    def remaining(self) -> int:
        return max(0, math.floor(self.check.limit - self.level + 1e-9))

    @property
    def reset_ms(self) -> float:
        """Milliseconds until the bucket is full again."""
        return self.level * PERIOD_MS / self.check.limit if self.check.limit else 0.0


UNLIMITED = "unlimited"


def ratelimit_headers(states: list[BucketState], *, known: bool = True) -> dict[str, str]:
    """The six ``x-ratelimit-*`` headers from bucket states.

    Per dimension (requests = RPM, tokens = TPM) the most constraining applicable limit is
    reported (least remaining). A dimension with no limit reports ``unlimited`` and ``0s``.
    ``known=False`` (store unreachable, fail-open): only the limits are reported.
    """
    headers = {}
    for dimension, kind in (("requests", "rpm"), ("tokens", "tpm")):
        candidates = [s for s in states if s.check.kind == kind]
        if not candidates:
            headers.update({f"x-ratelimit-limit-{dimension}": UNLIMITED,
                            f"x-ratelimit-remaining-{dimension}": UNLIMITED,
                            f"x-ratelimit-reset-{dimension}": "0s"})
            continue
        state = min(candidates, key=lambda s: (s.remaining, s.check.limit))
        headers[f"x-ratelimit-limit-{dimension}"] = str(state.check.limit)
        if known:
            headers[f"x-ratelimit-remaining-{dimension}"] = str(state.remaining)
            headers[f"x-ratelimit-reset-{dimension}"] = go_duration(state.reset_ms)
    return headers


# The official OpenAI clients honour this header: no automatic retries where waiting cannot help
# (quota exhausted until the month ends; a request larger than the whole bucket; a limit of 0).
NO_RETRY = {"x-should-retry": "false"}

_KIND_TEXT = {"rpm": "requests per min (RPM)", "tpm": "tokens per min (TPM)"}


def _retry_headers(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds))), "retry-after-ms": str(max(1, math.ceil(seconds * 1000)))}


def _rejection(check: Check, value: float, retry_ms: float, month_end: datetime, headers: dict) -> RateLimitError:
    """The 429 for a failed check, worded as OpenAI words it, naming scope and limit."""
    who = check.scope.label
    if check.kind == "monthly_tokens":
        seconds = (month_end - datetime.now(dt_timezone.utc)).total_seconds()
        return RateLimitError(
            f"You exceeded your current quota: the monthly token quota (monthly_tokens) of {who} is "
            f"{check.limit} tokens; {int(value)} are used and this request needs {check.cost}. The quota "
            f"resets at {month_end:%Y-%m-%dT%H:%M:%SZ}; ask your administrator to raise it.",
            type="insufficient_quota", code="insufficient_quota",
            headers={**headers, **_retry_headers(seconds), **NO_RETRY})
    error_type = "requests" if check.kind == "rpm" else "tokens"
    if retry_ms < 0 and check.limit == 0:
        return RateLimitError(f"Rate limit reached for {who} on {_KIND_TEXT[check.kind]}: Limit 0; no requests "
                              "are allowed. Ask your administrator to raise it.",
                              type=error_type, code="rate_limit_exceeded", headers={**headers, **NO_RETRY})
    if retry_ms < 0:  # larger than the whole bucket: no wait helps, so no Retry-After
        return RateLimitError(
            f"Request too large for {who} on {_KIND_TEXT[check.kind]}: Limit {check.limit}, Requested "
            f"{check.cost}. The input or output tokens must be reduced in order to run successfully.",
            type=error_type, code="rate_limit_exceeded", headers={**headers, **NO_RETRY})
    used = min(check.limit, math.ceil(value - 1e-9))
    return RateLimitError(
        f"Rate limit reached for {who} on {_KIND_TEXT[check.kind]}: Limit {check.limit}, Used {used}, "
        f"Requested {check.cost}. Please try again in {go_duration(retry_ms)}.",
        type=error_type, code="rate_limit_exceeded", headers={**headers, **_retry_headers(retry_ms / 1000)})


def redis_down_error() -> ServiceUnavailableError:
    """503 with ``Retry-After`` (``ADMISSION_RETRY_AFTER_SECONDS``): the fail-closed answer. Not logged
    per response: the outage is logged once when it starts and ends (`config.redis_outage`)."""
    seconds = settings.ADMISSION_RETRY_AFTER_SECONDS
    error = ServiceUnavailableError(
        "Rate limiting is temporarily unavailable, so the request was not admitted. Please retry shortly.",
        headers=_retry_headers(seconds))
    error.logged = True
    return error
