"""Secrets out of logged text: signed /data urls (`sig=`), presigned S3 query strings
(`X-Amz-*`), tokens and the like, wherever they appear in a url, a request line or a query
string, are replaced by `REDACTED`."""

from __future__ import annotations

import re

#: query parameters whose values open data or identify a caller
_SECRET_PARAM = re.compile(
    r"(?i)(?:(?<=[?&;])|^)((?:sig|signature|x-amz-[a-z-]+|token|access_token|id_token|key|"
    r"code|password|secret|awsaccesskeyid|x-goog-[a-z-]+)=)[^&;\s\"]*"
)
#: credentials inside a url (`https://user:password@host/`) and bearer tokens in free text
_URL_PASSWORD = re.compile(r"(?<=://)([^/@\s:]+):[^/@\s]+@")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")
REDACTED = "***"
#: a piece of every name `_SECRET_PARAM` knows: ASCII text holding none of them (in lower
#: case) has no secret parameter, and skips the case-blind regex (microseconds a line);
#: other text always takes it (the regex folds e.g. 'ı' and 'ſ' to ASCII letters)
_HINTS = ("sig", "x-amz", "token", "key", "code", "password", "secret", "x-goog")


def redact_url(text: str) -> str:
    """`text` (a url, a request line, a query string) with secret parameter values replaced."""
    if text.isascii():
        lowered = text.lower()
        if not any(hint in lowered for hint in _HINTS):
            return text
    return _SECRET_PARAM.sub(r"\1" + REDACTED, text)


def redact_text(text: str) -> str:
    """`redact_url`, and url passwords and `Bearer <token>` anywhere in `text` (a log
    message of any origin)."""
    if "=" in text:
        text = redact_url(text)
    if "@" in text:
        text = _URL_PASSWORD.sub(r"\1:" + REDACTED + "@", text)
    if "earer" in text:
        text = _BEARER.sub(r"\1" + REDACTED, text)
    return text
