"""The client's errors, and one-line descriptions of what requests raises."""

from __future__ import annotations

import re

import requests


class ClientError(Exception):
    """The server refused the ticket, a block failed, or the payload does not check out."""


class InvalidRequest(ClientError, ValueError):
    """The request itself is wrong (not an http(s) URL, a bad region): a usage error."""


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


def describe(exc: BaseException) -> str:
    """What went wrong, in a few words: requests' own messages run to several lines of
    pool and adapter names ("HTTPConnectionPool(host=..., port=1): Max retries ...")."""
    if isinstance(exc, requests.exceptions.SSLError):
        reason = re.search(r"\[SSL[^\]]*\] ([^(']+)", str(exc))
        return f"TLS error: {reason.group(1).strip() if reason else 'handshake failed'}"
    if isinstance(exc, requests.exceptions.Timeout):
        return "timed out"
    if isinstance(exc, requests.exceptions.InvalidURL):
        return f"invalid URL ({exc})"
    text = str(exc)
    found = _ERRNO.search(text)
    if found:
        return found.group(1).strip().rstrip(".").lower()
    if "NameResolutionError" in text or "Name or service not known" in text:
        return "host name not found"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return f"connection broken mid-body ({_short(text)})"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return f"connection failed ({_short(text)})"
    return _short(text) or type(exc).__name__


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
