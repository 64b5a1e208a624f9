"""Logging that never carries a secret: signed /data urls, presigned S3 query strings and
tokens are cut out of every access-log line (gunicorn logs the raw request line)."""

from __future__ import annotations

import re
from typing import Any

from gunicorn.glogging import Logger

#: query parameters whose values open data or identify a caller
_SECRET_PARAM = re.compile(
    r"(?i)(?:(?<=[?&;])|^)((?:sig|signature|x-amz-[a-z-]+|token|access_token|id_token|key|"
    r"code|password|secret)=)[^&;\s\"]*"
)
REDACTED = "***"
#: gunicorn's "Invalid request from ip=...: <what>" quotes the offending line or header
_QUOTED = re.compile(r"""(['"]).*""", re.S)


def redact_url(text: str) -> str:
    """`text` (a url, a request line, a query string) with secret parameter values replaced."""
    return _SECRET_PARAM.sub(r"\1" + REDACTED, text)


def redact_refusal(message: str) -> str:
    """gunicorn's warning for a request it refused, without the quoted request line or
    header it names (a malformed `Authorization` line would otherwise be logged whole)."""
    if message.startswith("Invalid request from"):
        return _QUOTED.sub(REDACTED, message)
    return message


class RedactingLogger(Logger):  # type: ignore[misc,unused-ignore]
    """gunicorn's logger, with the request line, query string and referer redacted and no
    request header (Authorization, Cookie) available to the access-log format."""

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(msg, str):
            msg = redact_refusal(msg)
        super().warning(msg, *args, **kwargs)

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        for name in ("r", "q", "f"):
            if isinstance(atoms.get(name), str):
                atoms[name] = redact_url(atoms[name])
        for name in [k for k in atoms if k.startswith("{")]:
            if name.endswith("}i") and name[1:-2] in ("authorization", "cookie"):
                atoms[name] = REDACTED
        return atoms
