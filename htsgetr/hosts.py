"""The address a ticket's /data urls name when no base URL is configured: the client's `Host`,
checked against the server's `allowed_hosts`; `Forwarded` / `X-Forwarded-*` only from a peer
in `trusted_proxies`. No Flask here: `api/tickets.py` passes the request's parts in.

`allowed_hosts` entries: `name` (that name on the bind's port, or with no port: the scheme's
default, as a front proxy or port forward on 80/443 presents it), `name:port`, `name:*` (any
port), `*.domain` (its subdomains, same port forms), `[v6]` / `[v6]:port`, and `*` (any Host:
the check is off). Unset: the bind address, localhost, 127.0.0.1, ::1 and this machine's own
names (and addresses, when bound to every interface), on the bind's port.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

from .protocol import InvalidInput

ANY = "*"
LOOPBACK = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("", "0.0.0.0", "::")
DEFAULT_PORTS = {"http": 80, "https": 443}
#: the headers a WSGI server may already have turned into `wsgi.url_scheme` (gunicorn's
#: `secure_scheme_headers`, honoured by default from loopback peers)
SCHEME_HEADERS = ("x-forwarded-proto", "x-forwarded-protocol", "x-forwarded-ssl", "forwarded")

_LABEL = r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")
_PORT = re.compile(r"[0-9]{1,5}")

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def split_host(text: str, allow_star_port: bool = False) -> tuple[str, Optional[Union[int, str]]]:
    """("name", port) of `host[:port]` ("[v6]:port"; a bare v6 address has no port), the name
    lower-cased, a final "." dropped, v6 addresses compressed. ValueError if malformed."""
    text = text.strip().lower()
    port_text: Optional[str] = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {text!r}")
        name, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"unexpected {rest!r} after ']'")
            port_text = rest[1:]
        name = str(ipaddress.IPv6Address(name))
    elif text.count(":") > 1:
        name = str(ipaddress.IPv6Address(text))
    else:
        name, sep, port_text_or_empty = text.partition(":")
        port_text = port_text_or_empty if sep else None
    port: Optional[Union[int, str]] = None
    if port_text is not None:
        if allow_star_port and port_text == ANY:
            port = ANY
        elif _PORT.fullmatch(port_text) and 0 < int(port_text) < 65536:
            port = int(port_text)
        else:
            raise ValueError(f"bad port {port_text!r}")
    if ":" not in name:
        if name.startswith("*.") and allow_star_port:
            if not _HOSTNAME.fullmatch(name[2:]):
                raise ValueError(f"bad domain {name[2:]!r}")
        elif not _HOSTNAME.fullmatch(name):
            raise ValueError(f"bad host name {name!r}")
        name = name.rstrip(".")
    return name, port


def check_allowed_hosts(entries: Sequence[str]) -> list[str]:
    """The entries as given; ValueError naming the first malformed one."""
    for entry in entries:
        if entry.strip() == ANY:
            continue
        try:
            split_host(entry, allow_star_port=True)
        except ValueError as err:
            raise ValueError(f"{entry!r}: {err}") from None
    return list(entries)


def parse_networks(entries: Sequence[str]) -> tuple[Network, ...]:
    """CIDR networks (a bare address is a /32 or /128); ValueError naming a bad one."""
    out = []
    for entry in entries:
        try:
            out.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError as err:
            raise ValueError(f"{entry!r}: {err}") from None
    return tuple(out)


@functools.lru_cache(maxsize=1)
def machine_names(with_addresses: bool = False) -> frozenset[str]:
    """This machine's host name and fully qualified name (and, on request, the addresses
    its name resolves to), lower-case; asked once per process."""
    names = set()
    try:
        names.add(socket.gethostname())
        names.add(socket.getfqdn())
        if with_addresses:
            for info in socket.getaddrinfo(socket.gethostname(), None):
                names.add(str(info[4][0]).split("%", 1)[0])
    except OSError:
        pass
    return frozenset(n.lower().rstrip(".") for n in names if n)


@dataclass(frozen=True)
class _Entry:
    name: str  # exact name, or "*.domain"
    port: Optional[Union[int, str]]  # None: the bind's port (or none); "*": any

    def matches(self, name: str, port: Optional[int], bind_port: int) -> bool:
        if self.name.startswith("*."):
            if not name.endswith(self.name[1:]):
                return False
        elif name != self.name:
            return False
        if self.port == ANY:
            return True
        if self.port is None:
            return port is None or bind_port == 0 or port == bind_port
        return port == self.port


#: WSGI environ keys of the headers `origin` reads (`SCHEME_HEADERS` and forwarded's)
_ENVIRON_HEADERS = tuple(
    ("HTTP_" + h.upper().replace("-", "_"), h)
    for h in (*SCHEME_HEADERS, "x-forwarded-host", "x-forwarded-port")
)
#: (scheme, Host) answers remembered per policy; cleared when full (random Hosts only cost
#: the work they would cost uncached)
MEMO_SIZE = 256


@dataclass(frozen=True)
class HostPolicy:
    """`allowed_hosts` and `trusted_proxies` of one server, parsed."""

    entries: Optional[tuple[_Entry, ...]]  # None: any Host
    bind_port: int
    bind_scheme: str
    trusted: tuple[Network, ...]
    _memo: dict[tuple[str, str], Optional[str]] = field(
        default_factory=dict, compare=False, hash=False, repr=False
    )

    def environ_origin(self, environ: Mapping[str, Any]) -> Optional[str]:
        """`origin` of a WSGI request. Without forwarding headers the answer depends on the
        scheme and Host alone, and is remembered (a ticket request asks it once)."""
        headers = {h: environ[k] for k, h in _ENVIRON_HEADERS if k in environ}
        scheme, host = environ.get("wsgi.url_scheme", "http"), environ.get("HTTP_HOST")
        if headers or not host:
            return self.origin(scheme, host, environ.get("REMOTE_ADDR"), headers)
        memo = self._memo
        key = (scheme, host)
        found = memo.get(key, self)
        if found is not self:
            return found  # type: ignore[return-value]
        origin = self.origin(scheme, host, None, headers)  # raises for a Host not allowed
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        memo[key] = origin
        return origin

    def trusts(self, peer: Optional[str]) -> bool:
        if not peer or not self.trusted:
            return False
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in net for net in self.trusted)

    def origin(
        self, scheme: str, host: Optional[str], peer: Optional[str], headers: Mapping[str, str]
    ) -> Optional[str]:
        """`scheme://host[:port]` for the /data urls of this request; None when the request
        names no Host (the bind's address serves). InvalidInput for a Host not allowed."""
        headers = {k.lower(): v for k, v in headers.items()}
        if self.trusts(peer):
            fwd_scheme, fwd_host = forwarded(headers)
            scheme, host = fwd_scheme or scheme, fwd_host or host
        elif any(h in headers for h in SCHEME_HEADERS):
            scheme = self.bind_scheme  # the WSGI server may have believed them: we do not
        if scheme not in DEFAULT_PORTS:
            raise InvalidInput(f"unsupported forwarded protocol {scheme!r}")
        if not host:
            return None
        try:
            name, port = split_host(host)
        except ValueError:
            raise InvalidInput("the Host header is not a valid host[:port]") from None
        assert not isinstance(port, str)
        if port == DEFAULT_PORTS[scheme]:
            port = None
        if self.entries is not None and not any(
            e.matches(name, port, self.bind_port) for e in self.entries
        ):
            raise InvalidInput(
                f"Host {host.strip()[:100]!r} is not one this server answers to "
                "(set base_url or allowed_hosts)"
            )
        shown = f"[{name}]" if ":" in name else name
        return f"{scheme}://{shown}" + (f":{port}" if port is not None else "")


@functools.lru_cache(maxsize=16)
def host_policy(
    allowed_hosts: Optional[tuple[str, ...]],
    bind_host: str,
    bind_port: int,
    tls: bool,
    trusted_proxies: tuple[str, ...] = (),
) -> HostPolicy:
    """The policy of a server's settings (cached: called once per request)."""
    scheme = "https" if tls else "http"
    trusted = parse_networks(trusted_proxies)
    if allowed_hosts is not None and any(e.strip() == ANY for e in allowed_hosts):
        return HostPolicy(None, bind_port, scheme, trusted)
    if allowed_hosts is None:
        wildcard = bind_host in WILDCARD_BINDS
        names = {*LOOPBACK, *machine_names(wildcard)}
        if not wildcard:
            names.add(bind_host)
        entries = tuple(_Entry(split_host(n)[0], None) for n in sorted(names) if _valid(n))
    else:
        entries = tuple(_Entry(*split_host(e, allow_star_port=True)) for e in allowed_hosts)
    return HostPolicy(entries, bind_port, scheme, trusted)


def _valid(name: str) -> bool:
    try:
        split_host(name)
    except ValueError:
        return False
    return True


def forwarded(headers: Mapping[str, str]) -> tuple[Optional[str], Optional[str]]:
    """(scheme, host[:port]) a trusted proxy reports: the last element of `Forwarded`
    (RFC 7239; the nearest proxy's), else the last values of X-Forwarded-Proto / -Host /
    -Port. Either may be None (not reported). `headers` has lower-case names."""
    text = headers.get("forwarded")
    if text:
        params: dict[str, str] = {}
        for pair in _split_outside_quotes(_split_outside_quotes(text, ",")[-1], ";"):
            key, sep, value = pair.partition("=")
            if sep:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = re.sub(r"\\(.)", r"\1", value[1:-1])
                params[key.strip().lower()] = value
        if "host" in params or "proto" in params:
            proto = params.get("proto")
            return (proto.lower() if proto else None), params.get("host")
    proto = _last(headers.get("x-forwarded-proto"))
    host = _last(headers.get("x-forwarded-host"))
    port = _last(headers.get("x-forwarded-port"))
    if host and port:
        try:
            if split_host(host)[1] is None:
                host = f"{host}:{port}"
        except ValueError:
            pass  # refused by the caller
    return (proto.lower() if proto else None), host


def _last(value: Optional[str]) -> Optional[str]:
    if not value:
        return None
    return value.rsplit(",", 1)[-1].strip() or None


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for c in text:
        if escaped:
            escaped = False
        elif c == "\\" and quoted:
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(c)
    parts.append("".join(current))
    return parts
