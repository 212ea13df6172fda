"""Bearer API-key authentication for the ``/v1`` API (DRF authentication class)."""
from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from config.client_address import client_ip
from config.errors import AuthenticationError, PermissionDeniedError

from .models import AdminAPIKey, APIKey
from .selectors import UNREAD, ResolvedAdminKey, ResolvedKey, admin_api_key_resolve, api_key_resolve
from .services import admin_api_key_cache_key, api_key_cache_key, hash_key
from .throttling import auth_failure_record, auth_failures_cache_key, auth_failures_cache_name, auth_failures_check

# Longest plausible key; anything longer is refused before hashing.
MAX_KEY_LENGTH = 256
# A key's public id -> monotonic s when this process last asked Redis whether to write its last_used_at.
_used_tried: dict[str, float] = {}


def _used_tried_lately(public_id: str, at: float) -> bool:
    """Whether this process asked Redis whether to write the ``last_used_at`` of the key ``public_id``
    less than ``API_KEY_LAST_USED_WRITE_SECONDS`` before ``at`` (``time.monotonic()`` s)."""
    tried = _used_tried.get(public_id)
    return tried is not None and at - tried < settings.API_KEY_LAST_USED_WRITE_SECONDS


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
        (``cache.get_many``), then the throttle is checked (429 before any lookup), then the key.
        ``self.entry_stored``: the bytes of the key's cache entry as read (None when it was not read
        from the cache), for `APIKeyAuthentication`'s memory of keys."""
        self.entry_stored = None
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
        get_many_stored = getattr(cache, "get_many_stored", None)
        if get_many_stored is not None:  # a Redis that is down reads as nothing (IGNORE_EXCEPTIONS)
            fetched = get_many_stored(names)
        else:  # another cache backend: values only
            fetched = {name: (value, None) for name, value in cache.get_many(names).items()}
        auth_failures_check(address=address, count=int(fetched.get(names[0], (0,))[0] or 0))  # 429 past the limit
        try:
            if malformed is not None:
                raise malformed
            cached, stored = fetched.get(names[-1], (None, None))
            result = self._authenticate(plaintext, cached=cached)
        except AuthenticationError:
            auth_failure_record(address=address)
            raise
        self.entry_stored = stored  # None unless read from the cache
        return result

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
        at = time.monotonic()
        if _used_tried_lately(public_id, at):
            return
        _used_tried[public_id] = at
        if cache.add(f"{self.used_cache_prefix}:{key_id}", 1, timeout=settings.API_KEY_LAST_USED_WRITE_SECONDS):
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

    def __init__(self, *, remember: bool = False):
        self.remember = remember

    def authenticate(self, request):
        """As `BearerKeyAuthentication.authenticate`; with ``remember`` (``POST /v1/embeddings``,
        whose requests are all admitted), a key this process read from the cache in the last
        ``API_KEY_CACHE_SECONDS`` is taken from its memory, with no round trip, and
        ``request.key_confirmation`` (a `KeyConfirmation`) is what the admission round trip then
        checks (issue 12: key resolution from a process-local cache whose validity is checked
        inside the single admission round trip); it is None otherwise.

        Nothing is weaker than a round trip: every change that invalidates a key replaces its cache
        entry by a mark with a new token (`accounts.services.api_key_cache_invalidate`), so a
        revoked, expired, archived or re-scoped key, and a client address at its failure limit,
        fail the confirmation; the view (`embeddings.views.EmbeddingsView`) then authenticates the
        request with a round trip (`key_confirm`: 401, 429, or the key as it is now). A request
        refused before admission (400, 403, 404) is confirmed the same way before it is answered.
        The round trip instead: for a key not remembered or remembered too long ago, a method other
        than POST, a request due to write the key's ``last_used_at``, and where keys cannot be
        remembered (`_remembering`). Only a key whose cache entry was read is remembered, against
        those bytes: its own lookup's entry (a lookup's write may not have reached Redis), or a
        change's mark, whose token any later change replaces."""
        request.key_confirmation = None
        if not (self.remember and request.method == "POST" and _remembering()):
            return super().authenticate(request)
        header = get_authorization_header(request).split()
        name = None
        if len(header) == 2 and header[0].lower() in self.keywords and len(header[1]) <= MAX_KEY_LENGTH:
            try:
                name = self.cache_key(header[1].decode("ascii"))
            except UnicodeDecodeError:
                pass
        remembered = _remembered.get(name) if name is not None else None
        now = time.monotonic()
        # a request due to note the key as used takes the round trip: only a confirmed key is noted
        if (remembered is not None and remembered.until > now
                and _used_tried_lately(remembered.resolved.key_public_id, now)):
            resolved = remembered.resolved
            if resolved.expires_at is None or resolved.expires_at > timezone.now():
                request.key_confirmation = KeyConfirmation(
                    name=name, entry_key=str(cache.make_key(name)), entry=remembered.entry,
                    failures_key=auth_failures_cache_key(client_ip(request)),
                    failures_limit=settings.API_AUTH_FAILURE_LIMIT)
                return resolved, resolved
        return self.round_trip(request, name)

    def round_trip(self, request, name: str | None):
        """`BearerKeyAuthentication.authenticate` (raises its errors), remembering the key under
        ``name`` (its cache key name) when it was read from the cache, forgetting it otherwise."""
        now = time.monotonic()
        if name is not None:
            _remembered.pop(name, None)
        result = BearerKeyAuthentication.authenticate(self, request)
        if name is not None and result is not None and self.entry_stored is not None:
            if len(_remembered) >= _REMEMBERED_MAX_KEYS:
                _remembered.clear()
            _remembered[name] = _Remembered(result[0], self.entry_stored, now + settings.API_KEY_CACHE_SECONDS)
        return result

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


@dataclass(frozen=True)
class KeyConfirmation:
    """What confirms a key `APIKeyAuthentication` took from its process's memory, checked
    atomically in the request's admission round trip (`limits.admission.admission_reserve`): the
    key's cache entry must still be stored as ``entry`` (bytes) under ``entry_key``, and the
    client address's failed authentications under ``failures_key`` must be fewer than
    ``failures_limit`` (Redis keys with the cache's prefix). ``name``: the key's cache name, under
    which this process remembers it."""

    name: str
    entry_key: str
    entry: bytes
    failures_key: str
    failures_limit: int


@dataclass(frozen=True)
class _Remembered:
    resolved: ResolvedKey
    entry: bytes  # its cache entry's bytes when this process read or wrote it
    until: float  # time.monotonic() s


# Cache key name -> a project key this process authenticated from the cache or the database.
_remembered: dict[str, _Remembered] = {}
_REMEMBERED_MAX_KEYS = 10_000  # bound on this process's memory of them


def _remembering() -> bool:
    """Whether keys may be remembered: resolved keys are cached (``API_KEY_CACHE_SECONDS`` > 0) in the
    Redis the admission store runs on (``ADMISSION_REDIS_URL`` is the cache's one ``LOCATION``),
    through a cache that can tell how an entry is stored (`config.cache.RedisCache`)."""
    location = settings.CACHES["default"].get("LOCATION")
    return (settings.API_KEY_CACHE_SECONDS > 0 and isinstance(location, str)
            and location == settings.ADMISSION_REDIS_URL and hasattr(cache, "get_many_stored"))


class KeyChanged(Exception):
    """A request's key, taken from memory, turned out changed but valid when confirmed with a round
    trip (`key_confirm`): what the request was checked against is out of date, so it is served again
    from the start with the key as it is now (`embeddings.views.EmbeddingsView`)."""


def key_confirm(request) -> bool:
    """Authenticate ``request`` (a DRF request whose key `APIKeyAuthentication` took from memory)
    with the round trip, as `APIKeyAuthentication` does: its errors (401 ``invalid_api_key``, 429
    ``too_many_failed_authentications``) are raised. Sets ``request.user``/``request.auth`` to the
    key as it is now and clears ``request.key_confirmation``; returns whether the key changed
    (another `ResolvedKey`: what the request was checked against is out of date)."""
    name, request.key_confirmation = request.key_confirmation.name, None
    resolved, _ = APIKeyAuthentication(remember=True).round_trip(request, name)
    changed = resolved != request.auth
    if changed:
        request.user, request.auth = resolved, resolved
    return changed


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
