"""The client's IP address: the one helper every address-based rule uses (the failed-key throttle
in `accounts.throttling`, django-axes' sign-in lockouts through ``AXES_CLIENT_IP_CALLABLE``, and
any access rule by address).

``X-Forwarded-For`` is read only when the peer (``REMOTE_ADDR``) is one of ``TRUSTED_PROXIES``
(IPs or CIDRs, empty by default): anyone else can write any address into it. The header is then
walked from the right, skipping the trusted proxies that appended to it; the first address that
is not a trusted proxy is the client (the rule of nginx's ``real_ip_recursive`` and MDN's
"X-Forwarded-For, Selecting an IP address"). django-ipware is not used: it reads the header
whatever the peer, and its "trusted" list is matched against the header, not the peer.
"""
from __future__ import annotations

import functools
import ipaddress

from django.conf import settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.cache
def _networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    """``TRUSTED_PROXIES`` parsed (a bare IP is a /32 or /128). Raises ``ValueError`` for an entry
    that is neither an IP nor a CIDR, so a typo fails loudly instead of trusting nobody."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip())


def trusted_proxies() -> tuple[Network, ...]:
    """The networks of ``settings.TRUSTED_PROXIES``."""
    return _networks(tuple(settings.TRUSTED_PROXIES))


def _parse(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as a proxy writes it (``1.2.3.4``, ``1.2.3.4:5678``, ``[::1]:80``, ``::1``);
    None when it is none of these."""
    value = value.strip()
    if value.startswith("["):  # [v6] or [v6]:port
        value = value[1:].split("]", 1)[0]
    elif value.count(":") == 1:  # v4:port (a v6 address has at least two colons)
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    return getattr(address, "ipv4_mapped", None) or address


def _trusted(address, networks) -> bool:
    return any(address in network for network in networks)


def client_ip(request) -> str:
    """The client's IP address (normalized text, e.g. ``203.0.113.7`` or ``2001:db8::1``) of a Django
    ``HttpRequest`` or DRF ``Request``.

    ``REMOTE_ADDR`` unless it is a trusted proxy; then the rightmost ``X-Forwarded-For`` entry
    that is not a trusted proxy (all trusted: the leftmost; an unparsable entry ends the walk
    at the hop before it). Never raises for what a client sends.
    """
    meta = request.META
    peer = _parse(meta.get("REMOTE_ADDR", "") or "")
    if peer is None:
        return meta.get("REMOTE_ADDR", "") or "0.0.0.0"
    networks = trusted_proxies()
    if not networks or not _trusted(peer, networks):
        return str(peer)
    client = peer
    for entry in reversed(meta.get("HTTP_X_FORWARDED_FOR", "").split(",")):
        if not entry.strip():
            continue
        address = _parse(entry)
        if address is None:
            break
        client = address
        if not _trusted(address, networks):
            break
    return str(client)
