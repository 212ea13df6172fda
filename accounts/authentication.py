"""Bearer API-key authentication for the ``/v1`` API (DRF authentication class)."""
from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from config.client_address import client_ip
from config.errors import AuthenticationError, PermissionDeniedError

from .models import AdminAPIKey, APIKey
from .selectors import UNREAD, ResolvedAdminKey, ResolvedKey, admin_api_key_resolve, api_key_resolve
from .services import admin_api_key_cache_key, api_key_cache_key, hash_key
from .throttling import auth_failure_record, auth_failures_cache_name, auth_failures_check

# Longest plausible key; anything longer is refused before hashing.
MAX_KEY_LENGTH = 256
# A key's public id -> monotonic s when this process last asked Redis whether to write its last_used_at.
_used_tried: dict[str, float] = {}


def mask_key(plaintext: str) -> str:
    """What an error message may echo of a key: ``sk-proj-****abcd`` (never the secret)."""
    if len(plaintext) < 12:
        return "****"
    return f"{plaintext[:8]}****{plaintext[-4:]}"


class BearerKeyAuthentication(BaseAuthentication):
    """Shared steps of bearer-key authentication (subclasses say which kind of key).

    Parses ``Authorization: Bearer sk-...``, resolves the key through `resolve`, refuses
    revoked and expired keys, and writes ``last_used_at`` at most once per
    ``API_KEY_LAST_USED_WRITE_SECONDS`` per key. Raises `AuthenticationError` (401
    ``invalid_api_key``); returns ``None`` when no key was sent (DRF: 401). Failures are
    counted per client address (`accounts.throttling`): past ``API_AUTH_FAILURE_LIMIT`` in the
    window, `RateLimitError` (429 ``too_many_failed_authentications``) before any lookup.
    """

    keywords: tuple[bytes, ...] = (b"bearer",)  # the accepted schemes of the Authorization header, lower case
    model: type  # the key model whose ``last_used_at`` is written
    used_cache_prefix: str

    scheme_names = {b"bearer": "Bearer", b"api-key": "Api-Key"}

    def resolve(self, plaintext: str, cached=UNREAD):
        """The resolved key for a well-formed ``plaintext``; raise for the wrong kind or an unknown key.
        ``cached``: its cache entry (under `cache_key`), already read, or `UNREAD`."""
        raise NotImplementedError

    def cache_key(self, plaintext: str) -> str:
        """The cache key under which ``plaintext``'s resolved key is kept."""
        raise NotImplementedError

    def check(self, resolved, plaintext: str) -> None:
        """Further refusals of a resolved, unrevoked, unexpired key (none by default)."""

    def authenticate(self, request):
        """The address's failures and the key's cache entry are read in one round trip
        (``cache.get_many``), then the throttle is checked (429 before any lookup), then the key."""
        header = get_authorization_header(request).split()
        if not header:
            return None
        address = client_ip(request)
        plaintext = malformed = None
        try:
            plaintext = self._plaintext(header)
        except AuthenticationError as exc:
            malformed = exc  # raised below, once the throttle has had its say
        names = [auth_failures_cache_name(address), *([self.cache_key(plaintext)] if plaintext else [])]
        fetched = cache.get_many(names)  # a Redis that is down reads as nothing (IGNORE_EXCEPTIONS)
        auth_failures_check(address=address, count=int(fetched.get(names[0]) or 0))  # 429 past the limit
        try:
            if malformed is not None:
                raise malformed
            return self._authenticate(plaintext, cached=fetched.get(names[-1]))
        except AuthenticationError:
            auth_failure_record(address=address)
            raise

    def _plaintext(self, header: list[bytes]) -> str:
        """The key of an ``Authorization`` header split in words; `AuthenticationError` for another
        scheme, a malformed header or a value that is no key of ours."""
        if header[0].lower() not in self.keywords or len(header) != 2:
            expected = " or ".join(f"'Authorization: {self.scheme_names[k]} YOUR_KEY'" for k in self.keywords)
            raise AuthenticationError(f"Invalid Authorization header. Expected {expected}.")
        try:
            plaintext = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise AuthenticationError("Incorrect API key provided.") from None
        if not plaintext.startswith("sk-") or len(plaintext) > MAX_KEY_LENGTH:
            raise AuthenticationError(f"Incorrect API key provided: {mask_key(plaintext)}.")
        return plaintext

    def _authenticate(self, plaintext: str, cached):
        resolved = self.resolve(plaintext, cached)
        now = timezone.now()
        if resolved.revoked_at is not None:
            raise AuthenticationError(f"The API key {mask_key(plaintext)} has been revoked.")
        if resolved.expires_at is not None and resolved.expires_at <= now:
            raise AuthenticationError(f"The API key {mask_key(plaintext)} has expired.")
        self.check(resolved, plaintext)
        self._note_used(resolved.key_id, resolved.key_public_id, now)
        return resolved, resolved

    def _note_used(self, key_id: int, public_id: str, now) -> None:
        """Write ``last_used_at`` at most once per ``API_KEY_LAST_USED_WRITE_SECONDS`` per key across
        every process (a Redis ``SET NX`` with that expiry decides which request writes it); a process
        that tried within that interval does not ask Redis again (one round trip fewer per request)."""
        interval = settings.API_KEY_LAST_USED_WRITE_SECONDS
        at = time.monotonic()
        tried = _used_tried.get(public_id)
        if tried is not None and at - tried < interval:
            return
        _used_tried[public_id] = at
        if cache.add(f"{self.used_cache_prefix}:{key_id}", 1, timeout=interval):
            self.model.objects.filter(pk=key_id).update(last_used_at=now)

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class APIKeyAuthentication(BearerKeyAuthentication):
    """Project keys (``sk-proj-...``) for ``/v1/embeddings`` and ``/v1/models``, sent as
    ``Authorization: Bearer <key>`` or, as Yandex AI Studio's clients send theirs, ``Api-Key <key>``.

    On success ``request.user`` and ``request.auth`` are both the `ResolvedKey`. A valid
    admin key gets `PermissionDeniedError` (403 ``admin_key_not_allowed``); a key of an
    archived project is refused like a revoked one (401).
    """

    keywords = (b"bearer", b"api-key")
    model = APIKey
    used_cache_prefix = "apikey:used"

    def cache_key(self, plaintext: str) -> str:
        return api_key_cache_key(hash_key(plaintext))

    def resolve(self, plaintext: str, cached=UNREAD) -> ResolvedKey:
        if plaintext.startswith(AdminAPIKey.PREFIX) and admin_api_key_resolve(plaintext=plaintext) is not None:
            raise PermissionDeniedError(
                f"Admin API keys ({mask_key(plaintext)}) can only call the /v1/organization endpoints; "
                "use a project API key for this endpoint.", code="admin_key_not_allowed")
        resolved = api_key_resolve(plaintext=plaintext, cached=cached)
        if resolved is None:
            raise AuthenticationError(f"Incorrect API key provided: {mask_key(plaintext)}.")
        return resolved

    def check(self, resolved: ResolvedKey, plaintext: str) -> None:
        if resolved.project_archived_at is not None:
            raise AuthenticationError(f"The project of API key {mask_key(plaintext)} has been archived.")


class AdminAPIKeyAuthentication(BearerKeyAuthentication):
    """Admin keys (``sk-admin-...``) for the ``/v1/organization`` API.

    On success ``request.user`` and ``request.auth`` are the `ResolvedAdminKey`. A valid
    *project* key gets `PermissionDeniedError` (403 ``admin_key_required``).
    """

    model = AdminAPIKey
    used_cache_prefix = "adminkey:used"

    def cache_key(self, plaintext: str) -> str:
        return admin_api_key_cache_key(hash_key(plaintext))

    def resolve(self, plaintext: str, cached=UNREAD) -> ResolvedAdminKey:
        if not plaintext.startswith(AdminAPIKey.PREFIX):
            if api_key_resolve(plaintext=plaintext) is not None:
                raise PermissionDeniedError(
                    "This endpoint requires an admin API key (sk-admin-...); project API keys cannot read "
                    "organization usage.", code="admin_key_required")
            raise AuthenticationError(f"Incorrect API key provided: {mask_key(plaintext)}.")
        resolved = admin_api_key_resolve(plaintext=plaintext, cached=cached)
        if resolved is None:
            raise AuthenticationError(f"Incorrect API key provided: {mask_key(plaintext)}.")
        return resolved
