"""The client's address behind trusted reverse proxies (ASGI middleware, outermost).

Behind nginx or Caddy every connection comes from the proxy, so the
per-address rules (the connection cap, the share rate limits) and the logs
need the address the proxy saw. `ClientAddress` works it out once per
request or WebSocket handshake and puts it in `scope["client"]`, so
everything inside (connlimit.py, Quart's `request.remote_addr`, the
WebSocket `Connection.client_address`) reads the resolved address with no
change of its own.

The rule (`server.trusted_proxies`: addresses and CIDRs, loopback by default,
like uvicorn's `forwarded_allow_ips`):
- a peer that is not trusted is the client, whatever headers it sends;
- from a trusted peer, the entries of `X-Forwarded-For` are read right to
  left (each proxy appends the address it saw): the first one that is not
  itself a trusted proxy is the client. When every entry is trusted, the
  leftmost one is. Without `X-Forwarded-For`, the `for=` parameters of RFC
  7239's `Forwarded` header are read the same way. `X-Forwarded-For` wins
  when both are there because nginx and Caddy always set it, while they
  pass a client's `Forwarded` through untouched;
- an entry that is not an address (garbage, `unknown`, an obfuscated
  `_hidden` identifier, an element without `for=`) ends the walk: the
  client is the trusted hop that reported it (the one to its right, or the
  peer), since anything further left was written by the unknown client.
  Such clients share the proxy's limits; they can never pick an address.
  Ports (`1.2.3.4:5678`, `"[2001:db8::1]:4711"`) and brackets are accepted
  and dropped; IPv4-mapped IPv6 addresses count as IPv4.

No header is ever trusted from a peer outside the list, so a client that
reaches the server directly cannot forge its address. Nothing here raises
on a header's content.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from functools import lru_cache

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PARSED_ADDRESS_CACHE = 4096  # peers and header entries seen again and again
MAX_ADDRESS_CHARS = 64  # "[v6%zone]:port" fits; longer entries are not addresses (nor cached)


def parse_network(text: str) -> IPNetwork:
    """An address or CIDR from the config ("10.0.0.0/8", "::1"); ValueError if neither."""
    return ipaddress.ip_network(text.strip(), strict=False)


def parse_address(text: str) -> IPAddress | None:
    """An address from a socket or a header entry, port and brackets dropped; None if not one."""
    text = text.strip().strip('"').strip()
    if text.startswith("["):  # [v6] or [v6]:port
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # v4:port (a bare v6 has two colons or more)
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """The configured proxies, and the rule that finds the client behind them."""

    def __init__(self, networks: Iterable[str]):
        self.networks = tuple(parse_network(network) for network in networks)
        # Peers and header entries repeat: each text is parsed and matched once.
        self._classify_once = lru_cache(maxsize=PARSED_ADDRESS_CACHE)(self._classify)

    def classify(self, text: str) -> tuple[str | None, bool]:
        """(the address in canonical form or None, whether it is a trusted proxy)."""
        if len(text) > MAX_ADDRESS_CHARS:
            return None, False
        return self._classify_once(text)

    def _classify(self, text: str) -> tuple[str | None, bool]:
        address = parse_address(text)
        if address is None:
            return None, False
        return str(address), any(address in network for network in self.networks)

    def client(self, peer: str, forwarded_for: str | None, forwarded: str | None) -> str:
        """The client's address for a connection from `peer` with these headers."""
        nearest, trusted = self.classify(peer)
        if nearest is None or not trusted:
            return peer
        if forwarded_for is not None:
            entries = forwarded_for.split(",")
        elif forwarded is not None:
            entries = [_forwarded_for(element) for element in forwarded.split(",")]
        else:
            return nearest
        for entry in reversed(entries):
            address, trusted = self.classify(entry)
            if address is None:
                break
            nearest = address
            if not trusted:
                break
        return nearest


def _forwarded_for(element: str) -> str:
    """The for= value of one element of an RFC 7239 Forwarded header ("" when none)."""
    for pair in element.split(";"):
        name, _, value = pair.partition("=")
        if name.strip().lower() == "for":
            return value
    return ""


class ClientAddress:
    """Rewrites `scope["client"]` to the client behind trusted proxies (see the module doc)."""

    def __init__(self, inner: Callable, trusted_proxies: Iterable[str]):
        self.inner = inner
        self.proxies = TrustedProxies(trusted_proxies)

    def __call__(self, scope: dict, receive: Callable, send: Callable) -> Awaitable[None]:
        # A plain function returning the inner app's coroutine: no frame of its own
        # stays alive for the life of every connection (issue #20, memory).
        peer = scope.get("client")
        if scope["type"] in ("http", "websocket") and peer and self.proxies.classify(peer[0])[1]:
            forwarded_for, forwarded = _proxy_headers(scope.get("headers", ()))
            address = self.proxies.client(peer[0], forwarded_for, forwarded)
            if address != peer[0]:
                # The port the proxy saw is not known: 0, as for an unknown port.
                scope = {**scope, "client": (address, 0)}
        # receive and send pass through untouched: the WebSocket fast path
        # finds Hypercorn's stream through send (websocket.py).
        return self.inner(scope, receive, send)


def _proxy_headers(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """X-Forwarded-For and Forwarded, each repeated header joined with commas (RFC 9110).

    ASGI header names are lower case."""
    forwarded_for: list[str] = []
    forwarded: list[str] = []
    for name, value in headers:
        if name == b"x-forwarded-for":
            forwarded_for.append(value.decode("latin-1"))
        elif name == b"forwarded":
            forwarded.append(value.decode("latin-1"))
    return (
        ",".join(forwarded_for) if forwarded_for else None,
        ",".join(forwarded) if forwarded else None,
    )
