"""Files behind HTTP(S): ``url`` + key (``https://host/path/`` + ``cohort/x.bam``), via requests.

- ``url`` is a base the quoted key is appended to (a ``/`` is inserted when missing), or a
  template with ``{key}`` (``https://host/get?file={key}``). ``index_url`` is the same for
  index keys (``.bai .csi .tbi .crai .gzi .fai``), so indexes may live elsewhere.
- Size, existence and version come from HEAD (ETag, else Last-Modified, plus the size). Where
  HEAD is refused (405, 403, 501; presigned urls often sign GET only) or says no size, a
  ranged ``GET bytes=0-0`` is used instead (Content-Range gives the total). Results are cached
  per process for ``cache_ttl`` seconds (`remote_cache.MetaCache`).
- Indexes, headers and block headers are read with ranged GETs; small reads share aligned
  windows. Every read checks its answer: 206 with the asked-for Content-Range (a 200 for a
  partial range means the upstream ignores ranges -> 502), the same ETag as the cached
  metadata (else the cache is dropped and the request fails rather than mix two versions), no
  Content-Encoding (``Accept-Encoding: identity`` is sent), and every byte (else 502).
- ``mode = "redirect"``: ticket urls are the upstream urls with the Range header. The static
  ``headers`` are *not* put in tickets (they are the server's secrets); upstreams that need
  credentials want ``mode = "proxy"``: ticket urls point at our ``/data``, which streams the
  upstream range (`stream`).
- Headers sent upstream: the static ``headers``, then the client headers named in
  ``forward_headers`` (only while serving a request). A client's ``Authorization`` is never
  forwarded unless ``forward_authorization`` is set. Metadata fetched with forwarded headers
  is cached per distinct forwarded values, so one client's access is never reused for another.
- One ``requests.Session`` per worker process (pooled keep-alive connections). Timeouts bound
  every connect and every wait for bytes (``timeout``). Refused connections and 502/503/504
  answers are retried ``retries`` times with backoff (0.1 s, 0.2 s, ...; ``Retry-After`` is
  not honoured, it could stall a worker); timeouts are never retried, so a hanging upstream
  costs one ``timeout``.

Errors: 404/410 -> NotFound; 401/403 -> UpstreamError 502 (the upstream refused *our*
request; the client's own permission is decided by our auth layer); other 4xx and 500 -> 502;
503 or connection refused -> 503; 504 or a timeout -> 504.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from http.cookiejar import DefaultCookiePolicy
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional
from urllib.parse import quote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError
from urllib3.exceptions import ReadTimeoutError as Urllib3ReadTimeout
from urllib3.util.retry import Retry

from ..protocol import HtsgetError, NotFound, UpstreamError
from .base import range_header
from .local import mount_path, safe_key
from .remote_cache import (
    WINDOW,
    CircuitBreaker,
    MetaCache,
    ObjectMeta,
    ProcessLocal,
    RangeCache,
)

if TYPE_CHECKING:
    from types import TracebackType

    from urllib3.connectionpool import ConnectionPool
    from urllib3.response import BaseHTTPResponse

    from ..config import Config, LocationConfig

log = logging.getLogger("htsgetr.storage.url")

INDEX_SUFFIXES = (".bai", ".csi", ".tbi", ".crai", ".gzi", ".fai")
STREAM_CHUNK = 256 * 1024
#: Never forwarded, whatever `forward_headers` says: they describe our own connection/request.
NEVER_FORWARD = frozenset(
    {
        "host", "connection", "keep-alive", "proxy-authorization", "proxy-connection", "te",
        "trailer", "transfer-encoding", "upgrade", "content-length", "content-type", "range",
        "accept-encoding", "if-range", "expect",
    }
)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class _Retry(Retry):
    """urllib3 Retry that gives up at once on a timeout (a hanging upstream hangs again)."""

    BACKOFF_MAX = 2.0  # urllib3 1.26 (2.x takes `backoff_max`)

    def increment(
        self,
        method: Optional[str] = None,
        url: Optional[str] = None,
        response: Optional[BaseHTTPResponse] = None,
        error: Optional[Exception] = None,
        _pool: Optional[ConnectionPool] = None,
        _stacktrace: Optional[TracebackType] = None,
    ) -> _Retry:
        if isinstance(error, Urllib3ReadTimeout):
            raise error
        if isinstance(error, ConnectTimeoutError) and not isinstance(error, NewConnectionError):
            raise MaxRetryError(_pool, url or "", error)  # type: ignore[arg-type]
        return super().increment(method, url, response, error, _pool, _stacktrace)


def _template(base: str) -> str:
    if "{key}" in base:
        return base
    return base if base.endswith(("/", "=")) else base + "/"


class UrlStorage:
    """Objects at ``url`` + key over HTTP(S), in redirect or proxy mode."""

    def __init__(
        self,
        url: str,
        index_url: Optional[str] = None,
        *,
        mode: str = "redirect",
        timeout: float = 10.0,
        retries: int = 2,
        headers: Optional[dict[str, str]] = None,
        forward_headers: Iterable[str] = (),
        forward_authorization: bool = False,
        cache_ttl: float = 0.0,
        data_url: str = "",
        mount: str = "",
    ) -> None:
        if mode not in ("redirect", "proxy"):
            raise ValueError(f"url mode must be 'redirect' or 'proxy', not {mode!r}")
        if not url or not url.startswith(("http://", "https://")):
            raise ValueError(f"url backend needs an http(s) url, got {url!r}")
        if index_url and not index_url.startswith(("http://", "https://")):
            raise ValueError(f"index_url must be an http(s) url, got {index_url!r}")
        self.url = _template(url)
        self.index_url = _template(index_url) if index_url else None
        self.mode = mode
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.headers = dict(headers or {})
        forward: dict[str, str] = {}  # lower-case name -> name as configured
        for name in forward_headers:
            forward.setdefault(name.lower(), name)
        forward.pop("authorization", None)
        if forward_authorization:
            forward["authorization"] = "Authorization"
        self.forward_headers = [n for k, n in sorted(forward.items()) if k not in NEVER_FORWARD]
        self.data_url = data_url.rstrip("/") + "/data/"
        self.mount = mount
        # no userinfo or query in the name: it appears in logs and cache keys
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        self.name = f"url:{parts.scheme}://{parts.hostname}{port}{parts.path}"
        self.meta_cache = MetaCache(cache_ttl)
        self.windows = RangeCache()
        self.breaker = CircuitBreaker(self.name)
        self._session: ProcessLocal[requests.Session] = ProcessLocal(self._make_session)
        #: upstream responses received by this process (for tests and metrics)
        self.calls = 0
        self._calls_lock = threading.Lock()
        if mode == "redirect" and any(h.lower() == "authorization" for h in self.headers):
            log.warning("%s: redirect mode hands clients upstream urls without the static "
                        "Authorization header; use mode = \"proxy\" if the upstream needs it",
                        self.name)

    @classmethod
    def from_location(cls, location: LocationConfig, mount: str, config: Config) -> UrlStorage:
        if not location.url:
            raise ValueError("a url location needs `url`")
        return cls(
            location.url,
            location.index_url,
            mode=location.mode,
            timeout=location.timeout,
            retries=location.retries,
            headers=location.headers,
            forward_headers=location.forward_headers,
            forward_authorization=location.forward_authorization,
            cache_ttl=location.cache_ttl,
            data_url=config.data_url(),
            mount=mount,
        )

    # ------------------------------------------------------------------ HTTP plumbing

    def _make_session(self) -> requests.Session:
        session = requests.Session()
        # no cookie jar: a cookie set in answer to one client's forwarded credentials must
        # never ride along with another client's request
        session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        params: dict[str, Any] = dict(
            total=self.retries,
            connect=self.retries,
            read=self.retries,
            status=self.retries,
            other=0,
            redirect=5,
            backoff_factor=0.1,
            status_forcelist=(502, 503, 504),
            allowed_methods=frozenset({"HEAD", "GET"}),
            raise_on_status=False,
            respect_retry_after_header=False,
        )
        try:
            retry = _Retry(backoff_max=2.0, **params)
        except TypeError:  # urllib3 1.26: `_Retry.BACKOFF_MAX`
            retry = _Retry(**params)
        adapter = HTTPAdapter(pool_connections=16, pool_maxsize=32, max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.hooks["response"].append(self._count)
        return session

    def _count(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        with self._calls_lock:
            self.calls += 1

    @property
    def session(self) -> requests.Session:
        return self._session.get()

    def _forwarded(self) -> dict[str, str]:
        if not self.forward_headers:
            return {}
        try:
            from flask import has_request_context, request
        except ImportError:  # pragma: no cover - flask is a dependency
            return {}
        if not has_request_context():
            return {}
        out = {}
        for name in self.forward_headers:
            value = request.headers.get(name)
            if value is not None:
                out[name] = value
        return out

    def _request_headers(self, extra: Optional[dict[str, str]] = None) -> dict[str, str]:
        headers = {**self.headers, **self._forwarded(), "Accept-Encoding": "identity"}
        if extra:
            headers.update(extra)
        return headers

    def _send(self, method: str, url: str, what: str, headers: dict[str, str],
              stream: bool = False) -> requests.Response:
        self.breaker.check()
        try:
            resp = self.session.request(
                method, url, headers=headers, timeout=(self.timeout, self.timeout),
                allow_redirects=True, stream=stream,
            )
        except requests.RequestException as exc:
            raise self._failed(exc, what) from None
        self.breaker.success()
        return resp

    def _failed(self, exc: requests.RequestException, what: str) -> UpstreamError:
        """The htsget error for a failed request; unreachable / hanging upstreams count
        towards the circuit breaker."""
        err = _exception_error(exc, what, self.timeout)
        if err.status in (503, 504):
            self.breaker.failure()
        return err

    # ------------------------------------------------------------------ keys and metadata

    def url_for(self, key: str) -> str:
        """The upstream url of `key` (index keys use `index_url` when set)."""
        clean = safe_key(key)
        if clean is None:
            raise NotFound(f"no such object: {key!r}")
        template = self.url
        if self.index_url and clean.endswith(INDEX_SUFFIXES):
            template = self.index_url
        quoted = quote(clean, safe="/")
        if "{key}" in template:
            return template.replace("{key}", quoted)
        return template + quoted

    def _cache_key(self, url: str) -> tuple[str, ...]:
        """Metadata cache key: the url, and a digest of the forwarded client headers."""
        forwarded = self._forwarded()
        if not forwarded:
            return (url,)
        return (url, hashlib.sha256(repr(sorted(forwarded.items())).encode()).hexdigest())

    def meta(self, key: str) -> ObjectMeta:
        url = self.url_for(key)
        return self.meta_cache.get(self._cache_key(url), lambda: self._head(key, url))

    def _head(self, key: str, url: str) -> ObjectMeta:
        resp = self._send("HEAD", url, f"HEAD {key}", self._request_headers())
        resp.close()
        length = resp.headers.get("Content-Length")
        if resp.status_code == 200 and length is not None and length.isdigit() \
                and not _encoded(resp):
            return _meta_from(resp, int(length))
        if resp.status_code in (200, 403, 405, 501) or (400 <= resp.status_code < 500
                                                        and resp.status_code not in (404, 410)):
            return self._probe(key, url)
        raise _status_error(resp, f"HEAD {key}")

    def _probe(self, key: str, url: str) -> ObjectMeta:
        """Size and version from ``GET bytes=0-0`` where HEAD is refused or says no size."""
        resp = self._send("GET", url, f"GET {key}", self._request_headers({"Range": "bytes=0-0"}),
                          stream=True)
        resp.close()
        if resp.status_code == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if m and m.group(3) != "*":
                return _meta_from(resp, int(m.group(3)))
            raise UpstreamError(f"upstream gave no total size for {key}")
        if resp.status_code == 416:
            total = resp.headers.get("Content-Range", "").rpartition("/")[2]
            if total == "0":
                return _meta_from(resp, 0)
        if resp.status_code == 200:
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and not _encoded(resp):
                return _meta_from(resp, int(length))
            raise UpstreamError(f"upstream gave no size for {key}")
        raise _status_error(resp, f"GET {key}")

    # ------------------------------------------------------------------ Storage protocol

    def exists(self, key: str) -> bool:
        try:
            self.meta(key)
            return True
        except NotFound:
            return False

    def size(self, key: str) -> int:
        return self.meta(key).size

    def version(self, key: str) -> str:
        return self.meta(key).version

    def read(self, key: str, start: int, end: int) -> bytes:
        meta = self.meta(key)
        end = min(end, meta.size)
        if start >= end:
            return b""
        url = self.url_for(key)

        def fetch(a: int, b: int) -> bytes:
            return self._get_range(key, url, meta, a, b)

        if end - start <= WINDOW:
            return self.windows.read((url, meta.version), meta.size, start, end, fetch)
        return fetch(start, end)

    def _open_range(self, key: str, url: str, meta: ObjectMeta, start: int, end: int
                    ) -> requests.Response:
        """A checked, streaming response for bytes ``[start, end)`` (see the module doc)."""
        what = f"GET {key}"
        resp = self._send("GET", url, what, self._request_headers(range_header(start, end)),
                          stream=True)
        try:
            if resp.status_code not in (200, 206):
                raise _status_error(resp, what)
            if _encoded(resp):
                raise UpstreamError(f"upstream compressed the bytes of {key} (Content-Encoding)")
            etag = resp.headers.get("ETag")
            if meta.etag and etag and etag != meta.etag:
                self.meta_cache.invalidate(self._cache_key(url))
                raise UpstreamError(f"{key} changed while it was being read; retry the request")
            if resp.status_code == 200:
                if start != 0 or end != meta.size:
                    raise UpstreamError(f"upstream ignores byte ranges for {key}")
            else:
                m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                if not m or int(m.group(1)) != start or int(m.group(2)) != end - 1:
                    raise UpstreamError(f"upstream answered the wrong range for {key}")
        except HtsgetError:
            resp.close()
            raise
        return resp

    def _get_range(self, key: str, url: str, meta: ObjectMeta, start: int, end: int) -> bytes:
        resp = self._open_range(key, url, meta, start, end)
        try:
            data = b"".join(resp.iter_content(STREAM_CHUNK))
        except requests.RequestException as exc:
            raise self._failed(exc, f"GET {key}") from None
        finally:
            resp.close()
        if len(data) != end - start:
            raise UpstreamError(f"upstream returned {len(data)} of {end - start} bytes of {key}")
        return data

    def block_url(self, key: str, start: int, end: int) -> tuple[str, Optional[dict[str, str]]]:
        if self.mode == "proxy":
            if safe_key(key) is None:
                raise NotFound(f"no such object: {key!r}")
            return self.data_url + quote(mount_path(self.mount, key)), range_header(start, end)
        return self.url_for(key), range_header(start, end)

    def stream(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``[start, end)`` for /data (proxy mode). The upstream answer is checked
        before this returns, so its errors become htsget errors; a failure mid-body cuts the
        response short, which clients detect by Content-Length."""
        meta = self.meta(key)
        end = min(end, meta.size)
        if start >= end:
            return iter(())
        resp = self._open_range(key, self.url_for(key), meta, start, end)
        body = resp.iter_content(STREAM_CHUNK)
        # the first chunk is read now: a failure before any byte went out is an htsget error
        try:
            first = next(body, b"")
        except requests.RequestException as exc:
            resp.close()
            raise self._failed(exc, f"GET {key}") from None

        def chunks() -> Iterator[bytes]:
            sent = len(first)
            try:
                if first:
                    yield first
                for chunk in body:
                    sent += len(chunk)
                    yield chunk
            except requests.RequestException as exc:
                log.error("%s: stream of %s cut at %d of %d bytes: %s", self.name, key, sent,
                          end - start, type(exc).__name__)
                raise UpstreamError(f"upstream stream of {key} was cut short") from None
            finally:
                resp.close()
            if sent != end - start:
                log.error("%s: stream of %s ended at %d of %d bytes", self.name, key, sent,
                          end - start)
                raise UpstreamError(f"upstream stream of {key} was cut short")

        return chunks()


def _encoded(resp: requests.Response) -> bool:
    return resp.headers.get("Content-Encoding", "identity").lower() not in ("identity", "")


def _meta_from(resp: requests.Response, size: int) -> ObjectMeta:
    etag = resp.headers.get("ETag")
    modified = resp.headers.get("Last-Modified")
    version = f"{etag or modified or ''}:{size}"
    return ObjectMeta(size, version, etag)


def _status_error(resp: requests.Response, what: str) -> HtsgetError:
    status = resp.status_code
    if status in (404, 410):
        return NotFound(f"no such object ({what})")
    if status in (401, 403):
        return UpstreamError(f"upstream refused {what} ({status})")
    if status == 503:
        return UpstreamError(f"upstream unavailable on {what} (503)", 503)
    if status == 504:
        return UpstreamError(f"upstream timed out on {what} (504)", 504)
    return UpstreamError(f"upstream failed on {what} ({status})")


def _exception_error(exc: requests.RequestException, what: str, timeout: float) -> UpstreamError:
    reason: Any = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    if isinstance(exc, requests.Timeout) or isinstance(reason, Urllib3ReadTimeout) or (
        isinstance(reason, ConnectTimeoutError) and not isinstance(reason, NewConnectionError)
    ):
        return UpstreamError(f"upstream timed out on {what} (after {timeout:g} s)", 504)
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return UpstreamError(f"upstream answer to {what} was cut short")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return UpstreamError(f"upstream unreachable on {what}", 503)
    return UpstreamError(f"upstream failed on {what} ({type(exc).__name__})")
