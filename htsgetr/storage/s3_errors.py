"""S3's answers as htsget errors: error codes, archive storage classes, the retry policy.

No client and no I/O here: `client_error` maps a botocore ClientError's response, `retryable`
says whether `S3Storage` retries it (after `backoff`), `archived` reads a HEAD / GET answer's
storage class. Transport failures (timeouts, an unreachable endpoint) are caught by the retry
loop, `S3Storage._call`. The rules, all told (the client always gets htsget JSON):

- missing object or bucket -> NotFound (404).
- HeadObject answers a bare 403 both for "denied" and, when the role lacks s3:ListBucket, for
  "missing"; a ranged GET then tells them apart (NoSuchKey -> 404; AccessDenied stays
  ambiguous and is answered as NotFound with a warning in the log; a rejected credential
  -> 502). A GetObject denied for an object HEAD could see -> UpstreamError 502: S3's 403 is
  about *our* credentials, not the client's permission, so it is an upstream fault.
- connection refused / endpoint unreachable -> 503; connect or read timeout -> 504 (never
  retried: a hanging endpoint would hang again, and the client must hear back in bounded
  time); throttling and 5xx -> retried ``retries`` times with short backoff, then 503 / 502.
- GLACIER / DEEP_ARCHIVE (and Intelligent-Tiering archive tiers) not restored ->
  `ArchivedObject`, a PermissionDenied (403): the object exists but cannot be read until it is
  restored, which takes hours. 403 is in htsget's error set, and htsget clients (htslib, the
  GA4GH client) retry 5xx but not 4xx, so no client spins on it; the message says to restore.
"""

from __future__ import annotations

import random
from typing import Any, Optional

from ..protocol import HtsgetError, NotFound, PermissionDenied, UpstreamError

#: Storage classes whose objects must be restored before they can be read.
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
ARCHIVE_TIERS = frozenset({"ARCHIVE_ACCESS", "DEEP_ARCHIVE_ACCESS"})
#: Error codes meaning "the server's credentials were refused" (not "the object is private").
CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "TokenRefreshRequired",
        "InvalidToken",
        "AuthorizationHeaderMalformed",
    }
)
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404", "NoSuchVersion"})
#: Answers meaning "busy, come back later": retried, then 503.
THROTTLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "ServiceUnavailable"}
)
#: Also retried (then 502): transient server-side failures.
TRANSIENT_CODES = frozenset({"InternalError", "RequestTimeout"})


class ArchivedObject(PermissionDenied):
    """The object is in an archive storage class and not restored (see the module doc)."""


class Denied(UpstreamError):
    """S3 answered 403 (a 502 for the client: it is about the server's credentials)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message, 502)
        self.code = code


def backoff(attempt: int) -> float:
    """0.1 s, 0.2 s, 0.4 s ... with jitter, capped at 2 s."""
    return float(min(2.0, 0.1 * (2**attempt)) * (0.5 + random.random() / 2))


def archived(resp: dict[str, Any]) -> Optional[str]:
    """The archive storage class (or Intelligent-Tiering tier) of an object not restored."""
    storage_class = resp.get("StorageClass")
    state = None
    restore = resp.get("Restore") or ""
    if storage_class in ARCHIVE_CLASSES and 'ongoing-request="false"' not in restore:
        state = storage_class
    if resp.get("ArchiveStatus") in ARCHIVE_TIERS:
        state = f"INTELLIGENT_TIERING ({resp['ArchiveStatus']})"
    return state


def retryable(exc: Any) -> bool:
    """Whether an S3 error answer is worth another try (throttling, transient, 5xx)."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code in THROTTLE_CODES or code in TRANSIENT_CODES or status >= 500


def client_error(exc: Any, what: str) -> HtsgetError:
    """An S3 error answer as the htsget error to raise."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in NOT_FOUND_CODES or status == 404:
        return NotFound(f"no such object ({what})")
    if code == "InvalidObjectState":
        return ArchivedObject(f"{what}: the object is archived and must be restored first")
    if code in CREDENTIAL_CODES:
        return Denied(f"S3 refused the server's credentials on {what} ({code})", code)
    if status == 403 or code == "AccessDenied":
        return Denied(f"S3 denied {what} (403)", code or "403")
    if code in THROTTLE_CODES or status == 503:
        return UpstreamError(f"S3 is unavailable on {what} ({code or status})", 503)
    if status == 412:
        return UpstreamError(f"{what}: the object changed; retry the request")
    return UpstreamError(f"S3 failed on {what} ({code or status})")
