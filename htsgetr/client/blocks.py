"""The blocks of a ticket: each fetched (inline `data:` decoded, HTTP with the block's
headers), checked, and handed over in ticket order while the next ones download.

At most `concurrency` blocks are in flight; each is spooled (in memory up to
`SPOOL_MEMORY`, then in a temporary file), so memory stays bounded whatever a block's size.
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from tempfile import SpooledTemporaryFile
from typing import IO, Any, Callable, Optional
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

import requests

from .errors import ClientError, describe
from .retry import send

CHUNK = 1 << 20
SPOOL_MEMORY = 8 << 20
MAX_REDIRECTS = 10
#: headers a redirect to another host does not get (curl's rule): credentials are for the
#: host they were given for
_CREDENTIALS = frozenset({"authorization", "cookie", "proxy-authorization"})

#: called from worker threads with what just arrived: (bytes, blocks completed)
Progress = Callable[[int, int], None]


def decode_data_url(url: str) -> bytes:
    """`data:[<type>][;base64],<payload>` (RFC 2397): base64 or percent-encoded."""
    head, sep, payload = url.partition(",")
    if not sep:
        raise ClientError("inline block: a data: url without a comma")
    if head.endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ClientError("inline block: invalid base64") from None
    return unquote_to_bytes(payload)


def expected_length(headers: dict[str, str]) -> Optional[int]:
    """The length a single `Range: bytes=a-b` asks for (None: no such header)."""
    rng = {k.lower(): v for k, v in headers.items()}.get("range", "").strip()
    if rng.startswith("bytes=") and "," not in rng:
        first, _, last = rng[6:].partition("-")
        if first.strip().isdigit() and last.strip().isdigit():
            return int(last) - int(first) + 1
    return None


def block_size(block: dict[str, Any]) -> Optional[int]:
    """The payload size of a block, when the ticket tells (inline data, a Range)."""
    url = block["url"]
    if url.startswith("data:"):
        return len(decode_data_url(url))
    return expected_length(dict(block.get("headers") or {}))


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


class Fetcher:
    """Downloads blocks with one pooled session; `token` goes only to blocks on the ticket
    server's own origin that carry no Authorization of their own."""

    def __init__(
        self,
        session: requests.Session,
        *,
        token_origin: Optional[str] = None,
        token: Optional[str] = None,
        timeout: float = 60.0,
        retries: int = 3,
        spool_dir: Optional[str] = None,
        progress: Optional[Progress] = None,
    ) -> None:
        self.session = session
        self.token = token
        self.token_origin = _origin(token_origin) if token_origin else None
        self.timeout = timeout
        self.retries = retries
        self.spool_dir = spool_dir
        self.progress = progress
        self.stop = threading.Event()

    def fetch(self, block: dict[str, Any]) -> IO[bytes]:
        """One block, checked, in a spool rewound to its start."""
        spool: IO[bytes] = SpooledTemporaryFile(SPOOL_MEMORY, dir=self.spool_dir)  # noqa: SIM115
        try:
            url = block["url"]
            if url.startswith("data:"):
                data = decode_data_url(url)
                spool.write(data)
                if self.progress:
                    self.progress(len(data), 1)
            else:
                self._http(url, dict(block.get("headers") or {}), spool)
                if self.progress:
                    self.progress(0, 1)
            spool.seek(0)
            return spool
        except BaseException:
            spool.close()
            raise

    def _http(self, url: str, block_headers: dict[str, str], spool: IO[bytes]) -> None:
        want = expected_length(block_headers)
        headers = {"Accept-Encoding": "identity", **block_headers}
        lower = {k.lower() for k in headers}
        if (self.token and "authorization" not in lower
                and self.token_origin is not None and _origin(url) == self.token_origin):
            headers["Authorization"] = f"Bearer {self.token}"
        attempt = 0
        while True:
            resp = self._follow(url, headers)
            with resp:
                if resp.status_code not in (200, 206):
                    raise ClientError(f"{resp.url}: HTTP {resp.status_code}"
                                      f"{_reason(resp)}")
                if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
                    raise ClientError(f"{resp.url}: content-encoded block "
                                      f"({resp.headers['Content-Encoding']}) refused")
                try:
                    got = self._copy(resp, spool)
                except (requests.RequestException, OSError) as exc:
                    # the body broke off (a dropped connection, a Content-Length that lied):
                    # retried from the start like a failed request
                    if attempt >= self.retries or self.stop.is_set():
                        raise ClientError(f"{url}: {describe(exc)}") from None
                    attempt += 1
                    spool.seek(0)
                    spool.truncate()
                    self.stop.wait(0.25 * 2**attempt)
                    continue
            declared = resp.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) != got:
                raise ClientError(f"{url}: Content-Length {declared}, received {got} bytes")
            if want is not None and got != want:
                raise ClientError(f"{url}: {got} bytes for a {want}-byte range")
            return

    def _follow(self, url: str, headers: dict[str, str]) -> requests.Response:
        """GET `url`, following redirects by hand: every hop gets the block's headers again
        (requests would drop some), except credentials when the host changes."""
        start = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            resp = send(self.session, "GET", url, headers, self.timeout, self.retries,
                        stream=True, allow_redirects=False, stop=self.stop)
            location = resp.headers.get("Location")
            if resp.status_code not in (301, 302, 303, 307, 308) or not location:
                return resp
            resp.close()
            url = urljoin(url, location)
            if _origin(url) != start:
                headers = {k: v for k, v in headers.items() if k.lower() not in _CREDENTIALS}
        raise ClientError(f"{url}: more than {MAX_REDIRECTS} redirects")

    def _copy(self, resp: requests.Response, spool: IO[bytes]) -> int:
        got = 0
        for chunk in resp.iter_content(CHUNK):
            if self.stop.is_set():
                raise ClientError("cancelled")
            spool.write(chunk)
            got += len(chunk)
            if self.progress:
                self.progress(len(chunk), 0)
        return got

    def ordered(self, blocks: list[dict[str, Any]], concurrency: int) -> Iterator[IO[bytes]]:
        """Each block's spool in ticket order, the next `concurrency - 1` downloading
        meanwhile; the first failure stops the others and is raised."""
        pool = ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="htsget-block")
        pending: deque[Future[IO[bytes]]] = deque()
        todo = iter(blocks)
        try:
            for block in todo:
                pending.append(pool.submit(self.fetch, block))
                if len(pending) >= concurrency:
                    break
            while pending:
                spool = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(self.fetch, nxt))
                try:
                    yield spool
                finally:
                    spool.close()
        finally:
            self.stop.set()
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)
            for future in pending:
                if future.done() and not future.cancelled() and future.exception() is None:
                    future.result().close()


def _reason(resp: requests.Response) -> str:
    """An htsget error body's type and message, when the data server sent one."""
    try:
        err = resp.json().get("htsget", {})
        return f" {err.get('error', '')}: {err.get('message', '')}".rstrip(": ")
    except (ValueError, AttributeError):
        return ""
