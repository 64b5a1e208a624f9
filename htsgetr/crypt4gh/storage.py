"""A Storage that shows the format handlers the PLAINTEXT of `<name>.c4gh` objects.

`Crypt4ghStorage` wraps a location's backend (local, S3, url). Key `x.bam` means the stored
object `x.bam.c4gh`: `size` is its plaintext size, `read` decrypts only the segments the
range touches (each segment authenticated: a MAC failure is an error, never bytes), and
`stream` (for /data, mode 2) decrypts `[crypt4gh] stream_segments` segments at a time.
Index files (`.bai`, `.csi`, `.tbi`, `.crai`, `.gzi`, `.fai`) and `.md5` sidecars may be
stored plain or `.c4gh`; every other object must be `.c4gh`.

What is kept in memory: per object version, the header's length and session keys (key
material, never logged); and a small LRU of CIPHERTEXT segments (a region's reads touch
the same few segments: a BGZF block header, then the block), so a repeated read costs a
decryption, not a storage round trip. No plaintext is cached here and nothing is written
to disk. (The engine's per-worker caches keep what they keep for plain files: parsed
indexes and headers, and the inflated BGZF blocks at a region's edges, bounded by
`block_cache_bytes`.)

Mode 1 (`encryptionScheme=C4GH`) reads the same plaintext view to compute its pieces, then
`crypt4gh.ticket` maps them onto stored segments, whose bytes `cipher_url` hands out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator, Optional
from urllib.parse import quote

from ..protocol import InvalidInput, NotFound
from ..storage.base import Storage, range_header
from ..storage.local import mount_path
from .header import (
    CIPHER_SEGMENT,
    SEGMENT,
    StoredHeader,
    decrypt_segment,
    parse_header,
    plain_size,
)
from .keys import CLIENT_KEY_HEADER, Crypt4ghConfig, ServerKeys, header_public_key
from .segments import cipher_range, segment_span

SUFFIX = ".c4gh"
#: companions that may be stored plain beside encrypted data files
PLAIN_SUFFIXES = (".bai", ".csi", ".tbi", ".crai", ".gzi", ".fai", ".md5")
#: ciphertext segments kept per storage (per worker): 128 x 64 KiB = 8 MiB
CIPHER_CACHE_SEGMENTS = 128
#: object versions whose header is kept
HEADER_CACHE = 1024


@dataclass(frozen=True)
class Stored:
    """One stored object behind a plaintext key."""

    key: str  # the stored key (`x.bam.c4gh`, or the plain index's own)
    encrypted: bool
    version: str
    cipher_size: int
    header: Optional[StoredHeader]
    size: int  # plaintext size


class Crypt4ghStorage:
    """See the module docstring. `inner` is the location's backend."""

    def __init__(self, inner: Storage, keys: ServerKeys, settings: Crypt4ghConfig,
                 data_url: str, mount: str, allow_plaintext: bool = True,
                 what: str = "location") -> None:
        self.inner = inner
        self.keys = keys
        self.settings = settings
        self.mount = mount
        self.allow_plaintext = allow_plaintext
        self.what = what  # names the location in errors
        self.name = f"c4gh:{inner.name}"
        self.data_url = data_url.rstrip("/") + "/data/"
        self._headers: OrderedDict[tuple[str, str], StoredHeader] = OrderedDict()
        self._segments: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()
        #: stored bytes read through this view (tests and bench/crypt4gh_bench.py)
        self.bytes_read = 0

    def __repr__(self) -> str:
        return f"Crypt4ghStorage({self.inner.name!r})"

    # ------------------------------------------------------------------ names

    def stored_key(self, key: str) -> Optional[str]:
        """The stored object behind plaintext `key`: `key.c4gh`, or `key` itself for a
        plain index or sidecar; None when there is none."""
        if key.endswith(SUFFIX):
            return None  # the view names plaintext only
        if self.inner.exists(key + SUFFIX):
            return key + SUFFIX
        if key.endswith(PLAIN_SUFFIXES) and self.inner.exists(key):
            return key
        return None

    def stored(self, key: str) -> Stored:
        found = self.stored_key(key)
        if found is None:
            raise NotFound(f"no such object: {key!r}")
        version = self.inner.version(found)
        size = self.inner.size(found)
        if not found.endswith(SUFFIX):
            return Stored(found, False, version, size, None, size)
        header = self._header(found, version, size)
        return Stored(found, True, version, size, header, plain_size(size, header))

    def _header(self, key: str, version: str, size: int) -> StoredHeader:
        ident = (key, version)
        with self._lock:
            hit = self._headers.get(ident)
            if hit is not None:
                self._headers.move_to_end(ident)
                return hit
        header = parse_header(lambda a, b: self._read_inner(key, a, b), size,
                              self.keys.secret, self._what(key),
                              self.settings.max_header_bytes)
        with self._lock:
            self._headers[ident] = header
            while len(self._headers) > HEADER_CACHE:
                self._headers.popitem(last=False)
        return header

    def _what(self, key: str) -> str:
        return f"{key!r} ({self.what})"

    def _read_inner(self, key: str, start: int, end: int) -> bytes:
        data = self.inner.read(key, start, end)
        self.bytes_read += len(data)
        return data

    # ------------------------------------------------------------------ Storage

    def exists(self, key: str) -> bool:
        return self.stored_key(key) is not None

    def size(self, key: str) -> int:
        return self.stored(key).size

    def version(self, key: str) -> str:
        found = self.stored_key(key)
        if found is None:
            raise NotFound(f"no such object: {key!r}")
        return "c4gh:" + self.inner.version(found)

    def read(self, key: str, start: int, end: int) -> bytes:
        obj = self.stored(key)
        end = min(end, obj.size)
        if start >= end:
            return b""
        if not obj.encrypted:
            return self._read_inner(obj.key, start, end)
        first, last = segment_span(start, end)
        plain = b"".join(self.segments(obj, first, last))
        base = first * SEGMENT
        return plain[start - base:end - base]

    def segments(self, obj: Stored, first: int, last: int) -> Iterator[bytes]:
        """Plaintext of segments `[first, last)`, each authenticated before it is yielded;
        the ciphertext of those not in the cache is read in one request."""
        assert obj.header is not None
        cached: dict[int, bytes] = {}
        with self._lock:
            for i in range(first, last):
                hit = self._segments.get((obj.key, obj.version, i))
                if hit is not None:
                    self._segments.move_to_end((obj.key, obj.version, i))
                    cached[i] = hit
        missing = [i for i in range(first, last) if i not in cached]
        if missing:
            lo, hi = missing[0], missing[-1] + 1
            a, b = cipher_range(lo, hi, obj.header.length, obj.cipher_size)
            data = self._read_inner(obj.key, a, b)
            with self._lock:
                for i in range(lo, hi):
                    piece = data[(i - lo) * CIPHER_SEGMENT:(i - lo + 1) * CIPHER_SEGMENT]
                    cached.setdefault(i, piece)
                    if hi - lo <= 4:  # single-segment reads repeat; long runs do not
                        self._segments[(obj.key, obj.version, i)] = piece
                while len(self._segments) > CIPHER_CACHE_SEGMENTS:
                    self._segments.popitem(last=False)
        for i in range(first, last):
            yield decrypt_segment(cached[i], obj.header.session_keys, self._what(obj.key), i)

    def block_url(self, key: str, start: int, end: int) -> tuple[str, Optional[dict[str, str]]]:
        """Mode 2: our /data endpoint, which decrypts (plaintext byte range)."""
        return self.data_url + quote(mount_path(self.mount, key)), range_header(start, end)

    def cipher_url(self, stored_key: str, start: int, end: int
                   ) -> tuple[str, Optional[dict[str, str]]]:
        """Mode 1: stored (encrypted) bytes `[start, end)`, where the backend serves them
        (our /data for local files and proxied backends, S3 presigned, upstream url)."""
        return self.inner.block_url(stored_key, start, end)

    def resolved_key(self, key: str) -> str:
        """`Resolver.data_object`'s symlink check, through the backend."""
        found = self.stored_key(key)
        if found is None:
            raise NotFound(f"no such object: {key!r}")
        resolve = getattr(self.inner, "resolved_key", None)
        real = str(resolve(found)) if resolve is not None else found
        if found.endswith(SUFFIX):
            if not real.endswith(SUFFIX):
                raise NotFound(f"no such object: {key!r}")
            return real[:-len(SUFFIX)]
        return real

    def check(self) -> None:
        check = getattr(self.inner, "check", None)
        if check is not None:
            check()

    def stream(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Mode 2 /data body: plaintext `[start, end)`, `stream_segments` segments per step
        (memory bound). The first step runs now, so its errors are htsget errors; a later
        failure (a tampered segment) cuts the response short: clients see the missing bytes
        by Content-Length, and no byte of the failing segment was sent."""
        obj = self.stored(key)
        end = min(end, obj.size)
        if start >= end:
            return iter(())
        if not obj.encrypted:
            return iter([self._read_inner(obj.key, start, end)])
        step = self.settings.stream_segments
        first, last = segment_span(start, end)

        def chunk(lo: int) -> bytes:
            hi = min(last, lo + step)
            plain = b"".join(self.segments(obj, lo, hi))
            base = lo * SEGMENT
            return plain[max(0, start - base):min(len(plain), end - base)]

        head = chunk(first)

        def rest() -> Iterator[bytes]:
            yield head
            for lo in range(first + step, last, step):
                yield chunk(lo)

        return rest()

    # ------------------------------------------------------------------ mode 1

    def recipient(self, header_value: Optional[str]) -> bytes:
        """The public key a C4GH ticket is encrypted for: the configured client key, else
        the request's `Htsget-Context-Public-Key` (InvalidInput when missing or bad)."""
        if self.keys.client is not None and not self.keys.client_from_header:
            return self.keys.client
        if not header_value:
            raise InvalidInput(f"encryptionScheme=C4GH needs the client's public key in the"
                               f" {CLIENT_KEY_HEADER} header (base64 of the key file)")
        try:
            return header_public_key(header_value)
        except ValueError as err:
            raise InvalidInput(f"{CLIENT_KEY_HEADER}: {err}") from None
