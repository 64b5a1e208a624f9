"""Amazon S3 and S3-compatible stores (MinIO, Ceph, R2, ...) through boto3.

- Metadata comes from HeadObject, cached per process for ``cache_ttl`` seconds (found and not
  found alike), so a warm ticket makes no S3 call within the TTL (`remote_cache.MetaCache`).
- Indexes, headers and BGZF block headers are read with ranged GetObject; small reads share
  aligned windows (`remote_cache.RangeCache`). A read whose ETag differs from the cached one
  invalidates the cache and fails (502) instead of mixing two versions of an object.
- Round trips (the `Batched` capability of `storage.base`): a cold region ticket makes at
  most three sequential ones. `stat_many` answers "which of the file, its index candidates,
  .gzi and .md5 exist" with ONE ListObjectsV2 over their common prefix (sizes and ETags
  included), cached like HEAD answers; where s3:ListBucket is denied it sends one ranged GET
  per key instead, all at once, whose answer tells existence and whose bytes (the object's
  first window) are kept. `read_many` fetches header, EOF, whole index and .gzi (then the
  blocks at the region's edges) in parallel on a per-process thread pool, and keeps them
  for the reads that follow. `calls` counts requests, `rounds` their sequential depth.
- ``mode = "presigned"`` (also "redirect", the default): ticket urls are presigned GET urls,
  valid ``expires`` seconds, with the Range header in the url's ``headers``; clients need no
  AWS credentials. ``mode = "proxy"``: ticket urls point at our ``/data``, which streams the
  range from S3 (`stream`), for buckets clients cannot reach.
- Credentials, region and endpoint follow boto3's standard chain (environment including
  ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``, shared files, ``profile``, instance roles);
  the location's ``region`` / ``endpoint_url`` win when set. Without any credentials the client
  is unsigned and ticket urls are plain object urls (public buckets).
- Bucket per ID: when the location has no ``bucket``, keys are ``<bucket>/<key>`` (e.g. a
  substitution ``$1/$2`` over ``^([^/]+)/(.*)$``).

Errors (the client always gets htsget JSON) are mapped in `s3_errors`: see its doc.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, TypeVar, Union
from urllib.parse import quote, urlparse

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
from .s3_errors import (
    ARCHIVE_CLASSES,
    CREDENTIAL_CODES,
    ArchivedObject,
    Denied,
    archived,
    backoff,
    client_error,
    retryable,
)

if TYPE_CHECKING:
    from ..config import Config, LocationConfig

log = logging.getLogger("htsgetr.storage.s3")
T = TypeVar("T")

#: Bytes per chunk when proxying a range through /data.
STREAM_CHUNK = 256 * 1024
#: Reads up to this size go through the window cache (a BGZF read-ahead of 256 KiB spans at
#: most three windows); larger ones are fetched as asked.
CACHED_READ = 4 * WINDOW
#: Requests one batch sends at once (a per-process pool; botocore keeps 32 connections).
PARALLEL = 16
#: Objects asked per listing: the keys of one ID sort together, so one page covers them.
LIST_PAGE = 1000
#: A bucket that refused a listing is not asked again for this long (guessed GETs instead).
LIST_RETRY_SECONDS = 600.0
#: Large ranges fetched ahead (whole indexes, CRAM containers, the span a BGZF region walk
#: reads) wait this long for the reads that want them, within this budget per process.
HELD_SECONDS = 5.0
HELD_BUDGET = 128 << 20
_MD5_ETAG = re.compile(r'^"[0-9a-f]{32}"$')
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$")


class S3Storage:
    """One S3 location: a bucket (or a bucket per key) and a key prefix."""

    def __init__(
        self,
        bucket: Optional[str],
        prefix: str = "",
        *,
        region: Optional[str] = None,
        endpoint_url: Optional[str] = None,
        public_endpoint_url: Optional[str] = None,
        path_style: bool = False,
        profile: Optional[str] = None,
        expires: int = 3600,
        mode: str = "presigned",
        timeout: float = 10.0,
        retries: int = 2,
        cache_ttl: float = 0.0,
        data_url: str = "",
        mount: str = "",
    ) -> None:
        if mode == "redirect":
            mode = "presigned"
        if mode not in ("presigned", "proxy"):
            raise ValueError(f"s3 mode must be 'presigned' or 'proxy', not {mode!r}")
        if bucket is not None and "$" not in bucket and not _BUCKET.match(bucket):
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        # a bucket template ("$1") is expanded by the resolver into "<bucket>/<key>" keys
        self.bucket = bucket if bucket and "$" not in bucket else None
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.region = region
        self.endpoint_url = endpoint_url or None
        #: where clients reach the store, when it differs from where we do (MinIO in a compose
        #: network: minio:9000 for us, localhost:9000 for them); presigned urls are signed for it
        self.public_endpoint_url = public_endpoint_url or None
        self.path_style = path_style
        self.profile = profile
        self.expires = int(expires)
        self.mode = mode
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.data_url = data_url.rstrip("/") + "/data/"
        self.mount = mount
        where = self.endpoint_url or "aws"
        self.name = f"s3:{where}:{self.bucket or '*'}/{self.prefix}"
        self.meta_cache = MetaCache(cache_ttl)
        self.windows = RangeCache()
        self.breaker = CircuitBreaker(self.name)
        self._client: ProcessLocal[Any] = ProcessLocal(self._make_client)
        #: presigning clients by the bucket's region (None: the session's), built per process
        self._signers: dict[Optional[str], ProcessLocal[Any]] = {}
        self._bucket_regions: dict[str, Optional[str]] = {}
        self._unsigned = False
        self._presigned: dict[tuple[str, str], tuple[str, float]] = {}
        #: HTTP requests sent to S3 by this process (retries included); for tests and metrics
        self.calls = 0
        #: their sequential depth: a request alone counts 1, a parallel batch its deepest task
        self.rounds = 0
        self._calls_lock = threading.Lock()
        self._pool: ProcessLocal[ThreadPoolExecutor] = ProcessLocal(
            lambda: ThreadPoolExecutor(PARALLEL, thread_name_prefix="htsgetr-s3"))
        #: buckets whose listing was denied (s3:ListBucket), until when
        self._unlisted: dict[str, float] = {}
        self.held = _Held(HELD_BUDGET, HELD_SECONDS)
        if profile:
            _check_profile(profile)

    @classmethod
    def from_location(cls, location: LocationConfig, mount: str, config: Config) -> S3Storage:
        expires = location.expires
        auth = config.auth_for("ticket")
        if auth is not None:  # presigned urls live no longer than our own signed ones
            expires = min(expires, auth.data_urls.expires)
        return cls(
            location.bucket,
            location.prefix,
            region=location.region,
            endpoint_url=location.endpoint_url,
            public_endpoint_url=location.public_endpoint_url,
            path_style=location.path_style,
            profile=location.profile,
            expires=expires,
            mode=location.mode,
            timeout=location.timeout,
            retries=location.retries,
            cache_ttl=location.cache_ttl,
            data_url=config.data_url(),
            mount=mount,
        )

    # ------------------------------------------------------------------ client

    def _make_client(
        self, endpoint_url: Optional[str] = None, region: Optional[str] = None
    ) -> Any:
        """A client for `endpoint_url` and `region` (defaults: the location's)."""
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config as BotoConfig

        session = boto3.session.Session(
            profile_name=self.profile, region_name=region or self.region
        )
        self._unsigned = session.get_credentials() is None
        if self._unsigned:
            log.info("%s: no AWS credentials found, using unsigned requests", self.name)

        def build(addressing: str) -> Any:
            config = BotoConfig(
                connect_timeout=self.timeout,
                read_timeout=self.timeout,
                # retries are ours (`_call`): botocore's would also retry timeouts
                retries={"total_max_attempts": 1, "mode": "standard"},
                s3={"addressing_style": addressing},
                signature_version=UNSIGNED if self._unsigned else "s3v4",
                max_pool_connections=32,
            )
            return session.client(
                "s3", endpoint_url=endpoint_url or self.endpoint_url, config=config
            )

        client = build("path" if self.path_style else "auto")
        host = urlparse(client.meta.endpoint_url).hostname or ""
        if not self.path_style and _is_aws(host) and not (self.bucket and "." in self.bucket):
            # "auto" presigns against the global endpoint (bucket.s3.amazonaws.com) in every
            # region; "virtual" gives bucket.s3.<region>.amazonaws.com, which needs no redirect
            client = build("virtual")
        client.meta.events.register("before-send.s3", self._count)
        return client

    def _count(self, **_: Any) -> None:
        task: Optional[list[int]] = getattr(_batch, "task", None)
        with self._calls_lock:
            self.calls += 1
            if task is None:
                self.rounds += 1
            else:
                task[0] += 1

    def _failure(self) -> None:
        """Tell the circuit breaker S3 hangs or cannot be reached, once per batch (requests
        sent together fail together: one observation of the outage, not several)."""
        failed: Optional[list[bool]] = getattr(_batch, "failed", None)
        if failed is not None:
            with self._calls_lock:
                if failed:
                    return
                failed.append(True)
        self.breaker.failure()

    def _parallel(self, tasks: Sequence[Callable[[], T]]) -> list[T]:
        """Run `tasks` at once on the pool; their results in order, or the first failure
        (after all have finished). One round trip, as deep as the deepest task."""
        if len(tasks) <= 1 or getattr(_batch, "task", None) is not None:
            return [task() for task in tasks]  # nothing to overlap, or already in a batch
        counts = [[0] for _ in tasks]
        failed: list[bool] = []  # shared: a batch of timeouts is one failure for the breaker

        def run(i: int) -> T:
            _batch.task, _batch.failed = counts[i], failed
            try:
                return tasks[i]()
            finally:
                _batch.task = _batch.failed = None

        futures = [self._pool.get().submit(run, i) for i in range(len(tasks))]
        wait_all(futures)
        with self._calls_lock:
            self.rounds += max(c[0] for c in counts)
        return [f.result() for f in futures]

    @property
    def client(self) -> Any:
        """The boto3 client of this process (built on first use, rebuilt after a fork)."""
        from botocore.exceptions import BotoCoreError

        try:
            return self._client.get()
        except BotoCoreError as exc:  # e.g. a credential_process that fails
            log.error("%s: cannot build the S3 client: %s", self.name, exc)
            raise UpstreamError(f"the S3 client cannot be configured ({type(exc).__name__})") \
                from None

    def _call(self, what: str, op: Callable[..., Any], **params: Any) -> Any:
        """Run one S3 operation with bounded retries; map failures to htsget errors."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )
        from botocore.exceptions import ConnectionError as BotoConnectionError

        self.breaker.check()
        attempt = 0
        while True:
            try:
                result = op(**params)
            except (ConnectTimeoutError, ReadTimeoutError):
                self._failure()
                raise UpstreamError(f"S3 timed out on {what} (after {self.timeout:g} s)", 504) \
                    from None
            except ClientError as exc:
                self.breaker.success()  # S3 answered: it is reachable
                err = client_error(exc, what)
                if not retryable(exc) or attempt >= self.retries:
                    raise err from None
                last: HtsgetError = err
            except NoCredentialsError:
                raise UpstreamError("S3 credentials are not available to the server") from None
            except (EndpointConnectionError, BotoConnectionError):
                if attempt >= self.retries:
                    self._failure()
                    raise UpstreamError(f"S3 endpoint unreachable on {what}", 503) from None
                last = UpstreamError(f"S3 endpoint unreachable on {what}", 503)
            except BotoCoreError as exc:
                raise UpstreamError(f"S3 failed on {what}: {type(exc).__name__}") from None
            else:
                self.breaker.success()
                return result
            log.info("%s: %s, retrying (%d/%d)", self.name, last.message, attempt + 1,
                     self.retries)
            time.sleep(backoff(attempt))
            attempt += 1

    # ------------------------------------------------------------------ keys and metadata

    def locate(self, key: str) -> tuple[str, str]:
        """(bucket, object key) of a storage key; NotFound for keys that cannot be objects."""
        clean = safe_key(key)
        if clean is None:
            raise NotFound(f"no such object: {key!r}")
        if self.bucket:
            return self.bucket, self.prefix + clean
        bucket, sep, rest = clean.partition("/")
        if not sep or not _BUCKET.match(bucket):
            raise NotFound(f"no such object: {key!r}")
        return bucket, self.prefix + rest

    def meta(self, key: str) -> ObjectMeta:
        bucket, obj = self.locate(key)
        return self.meta_cache.get((bucket, obj), lambda: self._head(bucket, obj, key))

    def _known(self, ident: tuple[str, str]) -> Union[ObjectMeta, None, _Unknown]:
        """The cached answer for an object (None: not found), without asking S3."""
        try:
            return self.meta_cache.get(ident, _not_cached)
        except NotFound:
            return None
        except _Miss:
            return _UNKNOWN

    def _denied_as_missing(self, err: Denied, bucket: str, obj: str, key: str) -> NotFound:
        """A bare 403 on an object: NotFound, logged (without s3:ListBucket S3 says 403 for
        a missing object too); credential errors are re-raised as they are."""
        if err.code in CREDENTIAL_CODES:
            raise err
        log.warning(
            "%s: S3 denied access to s3://%s/%s; answering NotFound (grant s3:ListBucket "
            "to tell missing from forbidden)", self.name, bucket, obj)
        return NotFound(f"no such object: {key!r}")

    def _remember(self, ident: tuple[str, str], value: Union[ObjectMeta, NotFound]) -> None:
        """Cache an answer learnt from a listing or a GET (a fresh one already cached stays)."""

        def load() -> ObjectMeta:
            if isinstance(value, NotFound):
                raise value
            return value

        try:
            self.meta_cache.get(ident, load)
        except NotFound:
            pass

    # ------------------------------------------------------------------ batches

    def stat_many(self, keys: Sequence[str]) -> dict[str, Optional[ObjectMeta]]:
        """Metadata of each key (None: not found) in one round trip when none is cached:
        one ListObjectsV2 per bucket over the keys' common prefix; where listing is denied
        (or a listing page did not reach a key), one ranged GET per key, in parallel."""
        out: dict[str, Optional[ObjectMeta]] = {}
        wanted: dict[str, list[tuple[str, str]]] = {}
        for key in keys:
            try:
                bucket, obj = self.locate(key)
            except NotFound:
                out[key] = None
                continue
            known = self._known((bucket, obj))
            if isinstance(known, _Unknown):
                wanted.setdefault(bucket, []).append((obj, key))
            else:
                out[key] = known
        if not wanted:
            return out
        now = time.monotonic()
        first: list[Callable[[], list[tuple[str, str, str]]]] = []
        for bucket in wanted:
            if self._needs_region(bucket):  # presigning will ask: ask now, alongside
                first.append(partial(self._learn_region, bucket))
        for bucket, items in wanted.items():
            if self._unlisted.get(bucket, 0.0) > now:
                first.extend(partial(self._probe, bucket, obj, key) for obj, key in items)
            else:
                first.append(partial(self._list, bucket, items))
        left = [item for found in self._parallel(first) for item in found]
        # keys a listing could not settle: denied, past its page, archived (restore status)
        self._parallel([partial(self._probe, *item) for item in left])
        for bucket, items in wanted.items():
            for obj, key in items:
                known = self._known((bucket, obj))
                if isinstance(known, _Unknown):  # an answer already expired (tiny TTL)
                    try:
                        known = self.meta(key)
                    except NotFound:
                        known = None
                out[key] = known
        return out

    def _list(self, bucket: str, items: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
        """One listing page from just below the first object, over the objects' common
        prefix; caches what it tells and returns the (bucket, object, key) it cannot."""
        objs = sorted(obj for obj, _ in items)
        params: dict[str, Any] = {
            "Bucket": bucket, "Prefix": os.path.commonprefix(objs), "MaxKeys": LIST_PAGE}
        if objs[0][:-1]:
            params["StartAfter"] = objs[0][:-1]  # sorts before every key wanted
        try:
            resp = self._call(f"LIST {params['Prefix']}", self.client.list_objects_v2, **params)
        except Denied as err:
            if err.code in CREDENTIAL_CODES:
                raise
            log.info("%s: listing s3://%s denied (no s3:ListBucket); asking per object",
                     self.name, bucket)
            self._unlisted[bucket] = time.monotonic() + LIST_RETRY_SECONDS
            return [(bucket, obj, key) for obj, key in items]
        except NotFound:  # no such bucket
            for obj, key in items:
                self._remember((bucket, obj), NotFound(f"no such object: {key!r}"))
            return []
        listed = {c["Key"]: c for c in resp.get("Contents", ())}
        upto = max(listed) if resp.get("IsTruncated") and listed else None
        settled: set[str] = set()
        for obj, entry in listed.items():
            if entry.get("StorageClass") in ARCHIVE_CLASSES:
                continue  # whether it is restored takes a HEAD
            settled.add(obj)
            self._remember((bucket, obj), _listed_meta(entry))
        left = []
        for obj, key in items:
            if obj in settled:
                continue
            if obj in listed or (resp.get("IsTruncated") and (upto is None or obj > upto)):
                left.append((bucket, obj, key))
            else:
                self._remember((bucket, obj), NotFound(f"no such object: {key!r}"))
        return left

    def _probe(self, bucket: str, obj: str, key: str) -> list[tuple[str, str, str]]:
        """Existence and metadata of one object from a GET of its first window (kept in the
        window cache: a header or an index starts there); where S3 gives no window (empty or
        archived objects), a HEAD."""
        ident = (bucket, obj)
        try:
            resp = self._call(f"GET {key}", self.client.get_object, Bucket=bucket, Key=obj,
                              Range=f"bytes=0-{WINDOW - 1}")
        except NotFound as err:
            self._remember(ident, err)
            return []
        except Denied as err:
            self._remember(ident, self._denied_as_missing(err, bucket, obj, key))
            return []
        except HtsgetError as err:
            if not isinstance(err, ArchivedObject) and "InvalidRange" not in err.message:
                raise
            self.meta_cache.invalidate(ident)
            try:
                self.meta(key)  # HEAD: archived objects, empty objects
            except NotFound:
                pass
            return []
        total = resp.get("ContentRange", "").rpartition("/")[2]
        size = int(total) if total.isdigit() else int(resp.get("ContentLength", 0))
        meta = _meta_from(resp, size)
        data = self._body(key, resp, min(size, WINDOW))
        self._remember(ident, meta)
        if data and not meta.archived:
            self.windows.read((bucket, obj, meta.version), size, 0, len(data),
                              lambda _a, _b: data)
        return []

    def read_many(self, ranges: Sequence[tuple[str, int, int]]) -> list[bytes]:
        """Bytes of each ``(key, start, end)``, fetched in one parallel batch (`prefetch`)."""
        fetched = self._prefetch(ranges)
        out = []
        for i, (key, start, end) in enumerate(ranges):
            got = fetched.get(i)
            if got is None:
                bucket, obj, meta = self._readable(key)
                got = self.windows.read(
                    (bucket, obj, meta.version), meta.size, start, min(end, meta.size),
                    partial(self._get_range, key, bucket, obj, meta))
            out.append(got)
        return out

    def prefetch(self, ranges: Sequence[tuple[str, int, int]]) -> None:
        """Fetch each ``(key, start, end)`` in one parallel batch, kept for the reads that
        follow: a large range (an index, a CRAM container, a region's span) for the reads
        inside it, until one of all of it takes it or `HELD_SECONDS` pass; a small one as
        aligned windows (neighbours share a request; cached ones are not asked again)."""
        self._prefetch(ranges)

    def _prefetch(self, ranges: Sequence[tuple[str, int, int]]) -> dict[int, bytes]:
        self.stat_many(list(dict.fromkeys(key for key, _, _ in ranges)))
        windows: dict[str, set[int]] = {}
        tasks: list[Callable[[], Optional[bytes]]] = []
        big: dict[int, int] = {}  # position in `ranges` -> task
        for i, (key, start, end) in enumerate(ranges):
            bucket, obj, meta = self._readable(key)
            end = min(end, meta.size)
            if start >= end:
                continue
            if end - start > CACHED_READ:
                big[i] = len(tasks)
                tasks.append(partial(self._fetch_held, key, bucket, obj, meta, start, end))
                continue
            ident = (bucket, obj, meta.version)
            for w in range(start // WINDOW, (end - 1) // WINDOW + 1):
                try:  # cached already?
                    self.windows.read(ident, meta.size, w * WINDOW, w * WINDOW + 1, _miss)
                except _Miss:
                    windows.setdefault(key, set()).add(w)
        per_read = CACHED_READ // WINDOW
        for key, wins in windows.items():
            run: list[int] = []
            for w in sorted(wins) + [-2]:
                if run and (w != run[-1] + 1 or len(run) == per_read):
                    tasks.append(partial(self._warm, key, run[0] * WINDOW,
                                         (run[-1] + 1) * WINDOW))
                    run = []
                run.append(w)
        results = self._parallel(tasks)
        return {i: data for i, t in big.items() if (data := results[t]) is not None}

    def _warm(self, key: str, start: int, end: int) -> None:
        self.read(key, start, end)

    def _fetch_held(
        self, key: str, bucket: str, obj: str, meta: ObjectMeta, start: int, end: int
    ) -> bytes:
        ident = (bucket, obj, meta.version)
        data = self.held.find(ident, start, end)
        if data is None:
            data = self._get_range(key, bucket, obj, meta, start, end)
            self.held.put(ident, start, data)
        return data

    def _head(self, bucket: str, obj: str, key: str) -> ObjectMeta:
        try:
            head = self._call(f"HEAD {key}", self.client.head_object, Bucket=bucket, Key=obj)
        except Denied:
            return self._probe_denied(bucket, obj, key)
        return _meta_from(head, int(head["ContentLength"]))

    def _probe_denied(self, bucket: str, obj: str, key: str) -> ObjectMeta:
        """HEAD said a bare 403: a 1-byte GET names the reason (see `s3_errors`)."""
        try:
            resp = self._call(
                f"GET {key}", self.client.get_object, Bucket=bucket, Key=obj, Range="bytes=0-0"
            )
        except Denied as err:
            raise self._denied_as_missing(err, bucket, obj, key) from None
        resp["Body"].close()
        total = resp.get("ContentRange", "").rpartition("/")[2]
        size = int(total) if total.isdigit() else int(resp.get("ContentLength", 0))
        return _meta_from(resp, size)

    def _readable(self, key: str) -> tuple[str, str, ObjectMeta]:
        bucket, obj = self.locate(key)
        meta = self.meta(key)
        if meta.archived:
            raise ArchivedObject(
                f"{key} is archived in S3 storage class {meta.archived} and must be restored "
                "before it can be read"
            )
        return bucket, obj, meta

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

    def md5(self, key: str) -> Optional[str]:
        """The object's MD5 from its ETag where S3 guarantees they agree (single-part upload,
        no SSE-KMS / SSE-C); None otherwise. Lets whole-file tickets carry `md5`."""
        meta = self.meta(key)
        if isinstance(meta, ListedMeta):  # a listing does not tell the encryption: HEAD
            self.meta_cache.invalidate(self.locate(key))
            meta = self.meta(key)
        return meta.md5

    def read(self, key: str, start: int, end: int) -> bytes:
        bucket, obj, meta = self._readable(key)
        end = min(end, meta.size)
        if start >= end:
            return b""

        def fetch(a: int, b: int) -> bytes:
            return self._get_range(key, bucket, obj, meta, a, b)

        ident = (bucket, obj, meta.version)
        held = self.held.take(ident, start, end)
        if held is not None:
            return held
        if end - start <= CACHED_READ:
            return self.windows.read(ident, meta.size, start, end, fetch)
        return fetch(start, end)

    def _get_range(
        self, key: str, bucket: str, obj: str, meta: ObjectMeta, start: int, end: int
    ) -> bytes:

        rng = range_header(start, end)["Range"]
        resp = self._call(f"GET {key}", self.client.get_object, Bucket=bucket, Key=obj, Range=rng)
        try:
            self._check_version(key, bucket, obj, meta, resp)
        except UpstreamError:
            resp["Body"].close()
            raise
        if isinstance(meta, ListedMeta):  # the answer's headers tell what a listing did not
            full = _meta_from(resp, meta.size)
            if full.version == meta.version:
                self.meta_cache.invalidate((bucket, obj))
                self._remember((bucket, obj), full)
        return self._body(key, resp, end - start)

    def _body(self, key: str, resp: dict[str, Any], expected: int) -> bytes:
        """The body of a GET answer, which must hold `expected` bytes."""
        from botocore.exceptions import BotoCoreError, ReadTimeoutError

        body = resp["Body"]
        try:
            data: bytes = body.read()
        except ReadTimeoutError:
            self._failure()
            raise UpstreamError(f"S3 timed out reading {key}", 504) from None
        except BotoCoreError as exc:
            raise UpstreamError(f"S3 read of {key} was cut short ({type(exc).__name__})") \
                from None
        finally:
            body.close()
        if len(data) != expected:
            raise UpstreamError(f"S3 returned {len(data)} of {expected} bytes of {key}")
        return data

    def _check_version(
        self, key: str, bucket: str, obj: str, meta: ObjectMeta, resp: dict[str, Any]
    ) -> None:
        etag = resp.get("ETag")
        if meta.etag and etag and etag != meta.etag:
            self.meta_cache.invalidate((bucket, obj))
            raise UpstreamError(f"{key} changed while it was being read; retry the request")

    def block_url(self, key: str, start: int, end: int) -> tuple[str, Optional[dict[str, str]]]:
        bucket, obj, _ = self._readable(key)
        if self.mode == "proxy":
            return self.data_url + quote(mount_path(self.mount, key)), range_header(start, end)
        return self.presign(bucket, obj), range_header(start, end)

    def presign(self, bucket: str, obj: str) -> str:
        """A GET url for the object, valid `expires` seconds (computed locally, no S3 call).

        The blocks of one ticket share a url: one is reused while at least 90% of its
        validity (and never more than a minute of it) is left.
        """
        from botocore.exceptions import BotoCoreError

        now = time.monotonic()
        cached = self._presigned.get((bucket, obj))
        if cached is not None and now - cached[1] < min(60.0, self.expires * 0.1):
            return cached[0]
        try:
            signer = self._signer(bucket)
            url: str = signer.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": obj}, ExpiresIn=self.expires
            )
        except BotoCoreError as exc:
            raise UpstreamError(f"cannot presign an S3 url: {type(exc).__name__}") from None
        if len(self._presigned) > 10_000:
            self._presigned.clear()
        self._presigned[(bucket, obj)] = (url, now)
        return url

    def check(self) -> None:
        """ValueError unless the location's bucket answers HeadBucket (checked at start; a
        bucket chosen per ID by capture groups is not known until a request names it).

        A role without s3:ListBucket gets a bare 403 from HeadBucket: a listing then tells
        a missing permission (accepted: existence is told by GETs, see `stat_many`) from
        refused credentials (ValueError). Either way whether listings work is learnt here,
        so that no ticket pays a round trip to find out."""
        if not self.bucket:
            return
        head_denied: Optional[Denied] = None
        try:
            self._call(f"HEAD bucket {self.bucket}", self.client.head_bucket, Bucket=self.bucket)
        except Denied as err:
            head_denied = err
        except HtsgetError as err:
            raise ValueError(f"bucket {self.bucket!r} cannot be used: {err.message}") from None
        try:
            self._call(f"LIST {self.bucket}", self.client.list_objects_v2, Bucket=self.bucket,
                       Prefix=self.prefix, MaxKeys=1)
        except Denied as err:
            if err.code in CREDENTIAL_CODES:
                raise ValueError(f"bucket {self.bucket!r} cannot be used: {err.message}") \
                    from None
            log.warning("%s: no s3:ListBucket on %s: objects are found by GETs, and one the "
                        "role may not read is answered as missing", self.name, self.bucket)
            self._unlisted[self.bucket] = time.monotonic() + LIST_RETRY_SECONDS
        except HtsgetError as err:
            if head_denied is not None:
                raise ValueError(f"bucket {self.bucket!r} cannot be used: {err.message}") \
                    from None

    def bucket_region(self, bucket: str) -> Optional[str]:
        """The region `bucket` lives in, from HeadBucket, once per bucket per process.

        Our own calls follow S3's region redirects, but a client holding a url signed for the
        wrong region just gets an error; so unless the location names its region, presigned
        urls are signed for the bucket's own.
        """
        if self.region:
            return self.region
        if bucket not in self._bucket_regions:
            region: Optional[str] = None
            try:
                resp = self._call(f"HEAD bucket {bucket}", self.client.head_bucket, Bucket=bucket)
                region = resp["ResponseMetadata"]["HTTPHeaders"].get("x-amz-bucket-region")
            except HtsgetError as err:
                log.warning("%s: region of bucket %s unknown: %s", self.name, bucket, err.message)
            self._bucket_regions[bucket] = region
        return self._bucket_regions[bucket]

    def _needs_region(self, bucket: str) -> bool:
        """Whether presigning for `bucket` will ask S3 for its region (see `_signer`)."""
        if self.mode != "presigned" or self.region or bucket in self._bucket_regions:
            return False
        self.client  # noqa: B018  # built first: it finds out whether we have credentials
        return not self._unsigned

    def _learn_region(self, bucket: str) -> list[tuple[str, str, str]]:
        self.bucket_region(bucket)
        return []

    def _signer(self, bucket: str) -> Any:
        """The client that presigns for `bucket`: its region, and the public endpoint if set."""
        client = self.client  # built first: it finds out whether we have credentials at all
        if self._unsigned and not self.public_endpoint_url:
            return client  # nothing is signed
        region = None if self._unsigned else self.bucket_region(bucket)
        if region == client.meta.region_name and not self.public_endpoint_url:
            return client
        if region not in self._signers:
            self._signers[region] = ProcessLocal(
                lambda: self._make_client(self.public_endpoint_url, region)
            )
        return self._signers[region].get()

    def stream(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``[start, end)`` for /data (proxy mode). The GetObject happens now, so its
        errors become htsget errors; a failure mid-body cuts the response short, which clients
        detect by Content-Length."""
        from botocore.exceptions import BotoCoreError, ReadTimeoutError

        bucket, obj, meta = self._readable(key)
        end = min(end, meta.size)
        if start >= end:
            return iter(())
        rng = range_header(start, end)["Range"]
        resp = self._call(f"GET {key}", self.client.get_object, Bucket=bucket, Key=obj, Range=rng)
        body = resp["Body"]
        it = body.iter_chunks(STREAM_CHUNK)
        # the first chunk is read now: a failure before any byte went out is an htsget error
        try:
            self._check_version(key, bucket, obj, meta, resp)
            first = next(it, b"")
        except ReadTimeoutError:
            body.close()
            self._failure()
            raise UpstreamError(f"S3 timed out reading {key}", 504) from None
        except BotoCoreError as exc:
            body.close()
            raise UpstreamError(f"S3 read of {key} was cut short ({type(exc).__name__})") \
                from None
        except UpstreamError:
            body.close()
            raise

        def chunks() -> Iterator[bytes]:
            sent = len(first)
            try:
                if first:
                    yield first
                for chunk in it:
                    sent += len(chunk)
                    yield chunk
            except BotoCoreError as exc:
                log.error("%s: stream of %s cut at %d of %d bytes: %s", self.name, key, sent,
                          end - start, type(exc).__name__)
                raise UpstreamError(f"S3 stream of {key} was cut short") from None
            finally:
                body.close()

        return chunks()


@dataclass(frozen=True)
class ListedMeta(ObjectMeta):
    """Metadata from a listing, which does not tell an object's encryption (so neither
    whether its ETag is its MD5: `S3Storage.md5` asks HEAD)."""


def _listed_meta(entry: dict[str, Any]) -> ListedMeta:
    etag, size = entry.get("ETag"), int(entry["Size"])
    version = f"{etag}:{size}" if etag else f"{entry.get('LastModified')}:{size}"
    return ListedMeta(size, version, etag, None, None)


class _Miss(Exception):
    """Raised by `_not_cached`: the metadata cache has no fresh answer."""


def _not_cached() -> ObjectMeta:
    raise _Miss


def _miss(_start: int, _end: int) -> bytes:
    raise _Miss


class _Unknown:
    """`S3Storage._known`: nothing cached."""


_UNKNOWN = _Unknown()
#: per thread: the call counter of the batch task it runs (see `S3Storage._parallel`)
_batch = threading.local()


class _Held:
    """Large ranges fetched ahead, kept for the reads inside them until a read of exactly
    one takes it, or `ttl` seconds; at most `budget` bytes in all."""

    def __init__(self, budget: int, ttl: float) -> None:
        self.budget, self.ttl = budget, ttl
        self._data: OrderedDict[tuple[Hashable, int, int], tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, ident: Hashable, start: int, data: bytes) -> None:
        if len(data) > self.budget:
            return
        now = time.monotonic()
        with self._lock:
            old = self._data.pop((ident, start, start + len(data)), None)
            self._bytes += len(data) - (len(old[1]) if old else 0)
            self._data[(ident, start, start + len(data))] = (now + self.ttl, data)
            while self._data and (
                self._bytes > self.budget or next(iter(self._data.values()))[0] < now
            ):
                _, (_, dropped) = self._data.popitem(last=False)
                self._bytes -= len(dropped)

    def find(self, ident: Hashable, start: int, end: int, take: bool = False
             ) -> Optional[bytes]:
        """Bytes ``[start, end)`` from a kept range holding them (removed when `take` and
        it is exactly that range), or None."""
        if not self._data:
            return None
        now = time.monotonic()
        with self._lock:
            for (i, a, b), (until, data) in self._data.items():
                if i == ident and a <= start and end <= b and until > now:
                    if take and (a, b) == (start, end):
                        del self._data[(i, a, b)]
                        self._bytes -= len(data)
                        return data
                    return data[start - a : end - a]
        return None

    def take(self, ident: Hashable, start: int, end: int) -> Optional[bytes]:
        return self.find(ident, start, end, take=True)


def _meta_from(resp: dict[str, Any], size: int) -> ObjectMeta:
    etag = resp.get("ETag")
    version = f"{etag}:{size}" if etag else f"{resp.get('LastModified')}:{size}"
    md5 = None
    # a single-part upload's ETag is its MD5, unless SSE-KMS or SSE-C encrypted it
    plain = resp.get("ServerSideEncryption") in (None, "AES256") and not resp.get(
        "SSECustomerAlgorithm")
    if etag and plain and _MD5_ETAG.match(etag):
        md5 = etag.strip('"')
    return ObjectMeta(size, version, etag, archived(resp), md5)


def _check_profile(profile: str) -> None:
    """A named profile must exist (a ValueError is reported as a configuration error)."""
    import boto3
    from botocore.exceptions import ProfileNotFound

    try:
        boto3.session.Session(profile_name=profile)
    except ProfileNotFound:
        raise ValueError(f"AWS profile {profile!r} is not configured") from None


def _is_aws(host: str) -> bool:
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn"))
