"""Signed /data urls: a ticket's url opens exactly its byte range, for a while, and nothing else.

The signature is HMAC-SHA256 over the method, the path below the data endpoint, the exact
`Range` header the ticket lists and the expiry, carried in the url's query string
(`exp`, `sig`), so htslib — which sends only the ticket's headers — needs no token for the
data. Several secrets verify (rotation); only the first signs. Compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from typing import Callable, Mapping, Optional

from ..protocol import PermissionDenied

#: environment variable holding the signing secret when the configuration does not
SECRET_ENV = "HTSGET_DATA_URL_SECRET"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def shared_secret(configured: Optional[str]) -> str:
    """The configured secret, else $HTSGET_DATA_URL_SECRET, else a new random one stored in
    that variable, so that gunicorn workers forked after this call agree on it."""
    if configured:
        return configured
    value = os.environ.get(SECRET_ENV)
    if not value:
        value = secrets.token_urlsafe(32)
        os.environ[SECRET_ENV] = value
    return value


class UrlSigner:
    """Signs and verifies /data urls. `secrets[0]` signs; every one of them verifies."""

    def __init__(
        self,
        keys: list[str],
        expires: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not keys or not all(keys):
            raise ValueError("a data url signing secret is required")
        self._keys = [k.encode("utf-8") for k in keys]
        self.expires = expires
        self._clock = clock

    def _mac(self, key: bytes, method: str, path: str, range_: str, exp: int) -> str:
        message = "\n".join((method, path, range_, str(exp))).encode("utf-8")
        return _b64(hmac.new(key, message, hashlib.sha256).digest())

    def sign(self, path: str, range_: str) -> str:
        """The query string (`exp=...&sig=...`) that opens `range_` of `path` (the decoded
        path below /data/, as the data endpoint sees it) for `expires` seconds."""
        exp = int(self._clock()) + self.expires
        sig = self._mac(self._keys[0], "GET", path, range_, exp)
        return f"exp={exp}&sig={sig}"

    def verify(
        self, method: str, path: str, range_: Optional[str], args: Mapping[str, str]
    ) -> None:
        """PermissionDenied unless (path, Range) is exactly what an unexpired url signed.

        HEAD is accepted where GET was signed: it reads nothing.
        """
        exp_text, sig = args.get("exp", ""), args.get("sig", "")
        if not exp_text or not sig:
            raise PermissionDenied("this data url is not signed: ask the ticket endpoint for one")
        if not exp_text.isascii() or not exp_text.isdigit() or len(exp_text) > 12:
            raise PermissionDenied("this data url's signature is invalid")
        exp = int(exp_text)
        if method not in ("GET", "HEAD"):
            raise PermissionDenied("this data url's signature is invalid")
        valid = False
        for key in self._keys:  # no early exit: the time taken does not tell which key
            expected = self._mac(key, "GET", path, (range_ or "").strip(), exp)
            valid |= hmac.compare_digest(expected.encode(), sig.encode())
        if not valid:
            raise PermissionDenied(
                "this data url's signature does not cover this request (other path or range?)"
            )
        if exp < self._clock():
            raise PermissionDenied("this data url has expired: ask the ticket endpoint again")

