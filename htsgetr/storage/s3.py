"""Amazon S3 and S3-compatible stores (MinIO, Ceph, R2, ...) through boto3.

- Metadata comes from HeadObject, cached per process for ``cache_ttl`` seconds (found and not
  found alike), so a warm ticket makes no S3 call within the TTL (`remote_cache.MetaCache`).
- Indexes, headers and BGZF block headers are read with ranged GetObject; small reads share
  aligned windows (`remote_cache.RangeCache`). A read whose ETag differs from the cached one
  invalidates the cache and fails (502) instead of mixing two versions of an object.
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
import re
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional
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

#: Bytes per chunk when proxying a range through /data.
STREAM_CHUNK = 256 * 1024
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
        self._calls_lock = threading.Lock()
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
        with self._calls_lock:
            self.calls += 1

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
                self.breaker.failure()
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
                    self.breaker.failure()
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
            if err.code in CREDENTIAL_CODES:
                raise
            log.warning(
                "%s: S3 denied access to s3://%s/%s; answering NotFound (grant s3:ListBucket "
                "to tell missing from forbidden)", self.name, bucket, obj)
            raise NotFound(f"no such object: {key!r}") from None
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
        return self.meta(key).md5

    def read(self, key: str, start: int, end: int) -> bytes:
        bucket, obj, meta = self._readable(key)
        end = min(end, meta.size)
        if start >= end:
            return b""

        def fetch(a: int, b: int) -> bytes:
            return self._get_range(key, bucket, obj, meta, a, b)

        if end - start <= WINDOW:
            return self.windows.read((bucket, obj, meta.version), meta.size, start, end, fetch)
        return fetch(start, end)

    def _get_range(
        self, key: str, bucket: str, obj: str, meta: ObjectMeta, start: int, end: int
    ) -> bytes:
        from botocore.exceptions import BotoCoreError, ReadTimeoutError

        rng = range_header(start, end)["Range"]
        resp = self._call(f"GET {key}", self.client.get_object, Bucket=bucket, Key=obj, Range=rng)
        body = resp["Body"]
        try:
            self._check_version(key, bucket, obj, meta, resp)
            data: bytes = body.read()
        except ReadTimeoutError:
            self.breaker.failure()
            raise UpstreamError(f"S3 timed out reading {key}", 504) from None
        except BotoCoreError as exc:
            raise UpstreamError(f"S3 read of {key} was cut short ({type(exc).__name__})") \
                from None
        finally:
            body.close()
        if len(data) != end - start:
            raise UpstreamError(f"S3 returned {len(data)} of {end - start} bytes of {key}")
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
        bucket chosen per ID by capture groups is not known until a request names it)."""
        if not self.bucket:
            return
        try:
            self._call(f"HEAD bucket {self.bucket}", self.client.head_bucket, Bucket=self.bucket)
        except HtsgetError as err:
            raise ValueError(f"bucket {self.bucket!r} cannot be used: {err.message}") from None

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
            self.breaker.failure()
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
