"""GET JSON from identity and authorization services, cached as their answers allow.

JWKS, callout and userinfo answers are asked for on the request path, so a worker keeps them
for as long as `Cache-Control` / `Expires` say (never longer, never when `no-store`,
`no-cache` or `private`), keyed by the URL and every header sent: a user's answer is never
served to another. One `requests.Session` per instance (connection reuse) that keeps no
cookies and reads no `.netrc`, so nothing of one caller reaches the next.

Error messages name the service by scheme, host and path only: query strings and header
values may hold secrets.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.cookiejar
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional
from urllib.parse import urlsplit

import requests

from ..protocol import UpstreamError
from .schema import HttpClientConfig

log = logging.getLogger(__name__)

#: a bigger answer is refused: JWKS, restrictions and passports are small documents
DEFAULT_MAX_BYTES = 4 << 20


def safe_url(url: str) -> str:
    """The URL as it may appear in a message: no user info, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


class HttpStatusError(UpstreamError):
    """The service answered with a non-2xx status; `body` is its JSON, when it sent JSON."""

    def __init__(self, url: str, upstream_status: int, body: Any) -> None:
        super().__init__(f"GET {safe_url(url)} answered HTTP {upstream_status}")
        self.upstream_status = upstream_status
        self.body = body


@dataclass(frozen=True)
class Answer:
    """A 2xx JSON answer. `data` may be shared with other callers: treat it as read-only."""

    data: Any
    #: clock time when it came from the network
    fetched_at: float
    #: clock time it stops being fresh; None when it may not be cached at all
    expires_at: Optional[float]


def _directives(value: str) -> dict[str, Optional[str]]:
    out: dict[str, Optional[str]] = {}
    for part in value.split(","):
        name, sep, arg = part.strip().partition("=")
        if name:
            out[name.strip().lower()] = arg.strip().strip('"') if sep else None
    return out


def _seconds(value: Optional[str]) -> float:
    """A delta-seconds value; anything unparseable counts as 0 (stale), as RFC 9111 says."""
    try:
        return float(max(int(value or ""), 0))
    except ValueError:
        return 0.0


def _http_date(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def freshness(headers: Mapping[str, str], now: float) -> Optional[float]:
    """Seconds an answer with these headers stays fresh, or None when it must not be kept."""
    cache_control = headers.get("Cache-Control")
    if cache_control is None:
        if "no-cache" in headers.get("Pragma", "").lower():
            return None
        directives: dict[str, Optional[str]] = {}
    else:
        directives = _directives(cache_control)
    if {"no-store", "no-cache", "private"} & directives.keys():
        return None
    if headers.get("Vary", "").strip() == "*":
        return None
    if "s-maxage" in directives:
        lifetime = _seconds(directives["s-maxage"])
    elif "max-age" in directives:
        lifetime = _seconds(directives["max-age"])
    elif "Expires" in headers:
        expires = _http_date(headers["Expires"])
        date = _http_date(headers.get("Date"))
        lifetime = 0.0 if expires is None else expires - (date if date is not None else now)
    else:
        return None  # no explicit freshness: no heuristic caching of identity answers
    lifetime -= _seconds(headers.get("Age", "0"))
    return lifetime if lifetime > 0 else None


def _no_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """An explicit (empty) auth, so requests never adds credentials from ~/.netrc."""
    return request


class HttpCache:
    """A thread-safe JSON GETter with a bounded LRU cache that obeys the answers' cache headers."""

    def __init__(
        self,
        cfg: Optional[HttpClientConfig] = None,
        *,
        clock: Callable[[], float] = time.time,
        max_entries: int = 1024,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.cfg = cfg if cfg is not None else HttpClientConfig()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._verify: Any = self.cfg.root_store or True
        self._cert = (self.cfg.cert, self.cfg.key) if self.cfg.cert and self.cfg.key else None
        self._session = requests.Session()
        self._session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        self._session.auth = _no_auth
        self._entries: OrderedDict[bytes, Answer] = OrderedDict()
        self._lock = threading.Lock()

    def get_json(self, url: str, headers: Optional[Mapping[str, str]] = None) -> Any:
        """The JSON of a GET (from the cache while fresh); see `fetch`."""
        return self.fetch(url, headers).data

    def fetch(
        self, url: str, headers: Optional[Mapping[str, str]] = None, *, refresh: bool = False
    ) -> Answer:
        """GET `url` with exactly `headers`; `refresh` skips the cache (and replaces the entry).

        Raises UpstreamError: 503 unreachable, 504 timed out, 502 not JSON or too large, and
        `HttpStatusError` (502, with the upstream status and JSON body) for a non-2xx answer.
        """
        sent = dict(headers or {})
        key = self._key(url, sent)
        if not refresh:  # nothing is stored when use_cache is off
            now = self._clock()
            with self._lock:
                hit = self._entries.get(key)
                if hit is not None:
                    if hit.expires_at is not None and now < hit.expires_at:
                        self._entries.move_to_end(key)
                        return hit
                    del self._entries[key]
        answer = self._get(url, sent)
        with self._lock:
            self._entries.pop(key, None)
            if self.cfg.use_cache and answer.expires_at is not None:
                self._entries[key] = answer
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        return answer

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def close(self) -> None:
        self._session.close()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _key(url: str, headers: Mapping[str, str]) -> bytes:
        """A digest, so cache keys do not keep bearer tokens around in plain text."""
        h = hashlib.sha256(url.encode())
        for name, value in sorted((n.lower(), v) for n, v in headers.items()):
            h.update(b"\0" + name.encode("latin-1", "replace") + b"\0")
            h.update(value.encode("utf-8", "replace"))
        return h.digest()

    def _get(self, url: str, headers: dict[str, str]) -> Answer:
        label = f"GET {safe_url(url)}"
        timeout = self.cfg.timeout
        started = time.monotonic()
        try:
            with self._session.get(
                url, headers=headers, timeout=timeout, verify=self._verify, cert=self._cert,
                stream=True,
            ) as resp:  # fmt: skip
                fetched_at = self._clock()
                body = self._read(resp, started, timeout, label)
                status, resp_headers = resp.status_code, resp.headers
        except requests.Timeout as err:
            log.debug("%s: %s", label, type(err).__name__)
            raise UpstreamError(f"{label}: timed out", status=504) from None
        except requests.ConnectionError as err:
            log.debug("%s: %s", label, type(err).__name__)
            raise UpstreamError(f"{label}: unreachable", status=503) from None
        except requests.RequestException as err:
            log.debug("%s: %s", label, type(err).__name__)
            raise UpstreamError(f"{label}: failed ({type(err).__name__})") from None
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            if not 200 <= status < 300:
                raise HttpStatusError(url, status, None) from None
            raise UpstreamError(f"{label}: the answer is not JSON") from None
        if not 200 <= status < 300:
            raise HttpStatusError(url, status, data)
        fresh = freshness(resp_headers, fetched_at)
        return Answer(data, fetched_at, None if fresh is None else fetched_at + fresh)

    def _read(self, resp: requests.Response, started: float, timeout: float, label: str) -> bytes:
        """The body, bounded in size and in total time (a read timeout alone is per chunk)."""
        declared = resp.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise UpstreamError(f"{label}: the answer is too large")
        chunks, size = [], 0
        for chunk in resp.iter_content(65536):
            size += len(chunk)
            if size > self.max_bytes:
                raise UpstreamError(f"{label}: the answer is too large")
            if time.monotonic() - started > timeout:
                raise UpstreamError(f"{label}: timed out", status=504)
            chunks.append(chunk)
        return b"".join(chunks)
