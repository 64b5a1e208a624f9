"""One HTTP request with retries: connection errors, timeouts and 5xx are tried again after
an exponential backoff (and a 503's Retry-After, up to a cap); anything else is final."""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

import requests

from .errors import ClientError, describe

#: seconds before the first retry; doubled each time
BACKOFF = 0.25
#: a server's Retry-After is honoured up to this many seconds
MAX_RETRY_AFTER = 10.0
RETRIABLE = frozenset({500, 502, 503, 504, 429})


def send(
    session: requests.Session,
    method: str,
    url: str,
    headers: dict[str, str],
    timeout: float,
    retries: int,
    *,
    stream: bool = False,
    allow_redirects: bool = True,
    stop: Optional[threading.Event] = None,
    json: Any = None,
) -> requests.Response:
    """The first answer that is not worth retrying (any status), else `ClientError`."""
    attempt = 0
    while True:
        wait = BACKOFF * 2**attempt
        try:
            resp = session.request(method, url, headers=headers, timeout=timeout, stream=stream,
                                   allow_redirects=allow_redirects, json=json)
        except requests.RequestException as exc:
            error = f"{url}: {describe(exc)}"
        else:
            if resp.status_code not in RETRIABLE:
                return resp
            error = f"{url}: HTTP {resp.status_code}"
            after = resp.headers.get("Retry-After", "")
            if after.isdigit():
                wait = max(wait, min(float(after), MAX_RETRY_AFTER))
            resp.close()
        if attempt >= retries or (stop is not None and stop.is_set()):
            raise ClientError(error + (f" (after {attempt + 1} tries)" if attempt else ""))
        attempt += 1
        if stop is not None:
            if stop.wait(wait):
                raise ClientError(error)
        else:
            time.sleep(wait)
