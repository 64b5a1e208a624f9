"""Where a caller's restrictions come from: a static JSON file, or a GET per request to an
authorization service (htsget-rs's callout) that sees the caller's chosen headers and the
request's context, and answers with an htsget-rs restrictions document.

Client headers are forwarded under their own names when an `allow` pattern matches and no
`deny` pattern does; hop-by-hop headers, `Host` and any client-sent `Htsget-Context-*` are
never forwarded (the context headers are ours: a client must not be able to forge them).
"""

from __future__ import annotations

import copy
import json
import logging
import re
from typing import Any, Mapping, Optional
from urllib.parse import quote

from ..protocol import InvalidAuthentication, PermissionDenied, UpstreamError
from .http_cache import HttpCache, HttpStatusError, safe_url
from .schema import AuthorizationConfig

log = logging.getLogger(__name__)

CONTEXT_PREFIX = "Htsget-Context-"
#: never forwarded, whatever the patterns say: they describe our connection, not the caller
_NEVER = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
    "trailer", "upgrade", "proxy-authorization", "proxy-connection", "expect",
    "accept-encoding",
})  # fmt: skip
_PATH = re.compile(r"\$((?:\.[A-Za-z_][A-Za-z0-9_-]*|\[\d+\])+)")
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]")
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_MAX_MESSAGE = 300


def _pattern(glob: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def header_name_from_path(json_path: str) -> str:
    """htsget-rs's derived name: `$.user.custom_id[0]` -> `User-Custom-Id-0` (Train-Case)."""
    words = _WORD.findall(json_path)
    return "-".join(w[:1].upper() + w[1:].lower() for w in words)


def _steps(json_path: str) -> list[Any]:
    match = _PATH.fullmatch(json_path)
    if match is None:
        raise ValueError(
            f"extensions json_path {json_path!r}: only simple paths like $.a.b or $.a[0]"
        )
    return [int(i) if i else n for n, i in _STEP.findall(match.group(1))]


def _lookup(doc: Any, steps: list[Any]) -> Any:
    for step in steps:
        if isinstance(step, int) and isinstance(doc, list) and step < len(doc):
            doc = doc[step]
        elif isinstance(step, str) and isinstance(doc, dict) and step in doc:
            doc = doc[step]
        else:
            return None
    return doc


def _header_value(value: str) -> str:
    """As sent: printable ASCII unchanged, anything a header cannot carry percent-encoded."""
    if all(" " <= c <= "~" for c in value):
        return value
    return quote(value, safe="".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%"))


class AuthorizationCallout:
    """Asks `cfg.url` for the restrictions of each request (cached per forwarded headers)."""

    def __init__(self, cfg: AuthorizationConfig, *, http: Optional[HttpCache] = None) -> None:
        if not cfg.url:
            raise ValueError("authorization.url: required by kind = 'callout'")
        self.cfg = cfg
        self.url = cfg.url
        self._http = http if http is not None else HttpCache(cfg.http)
        rules = cfg.forward.headers
        self._allow = [_pattern(p) for p in rules.allow]
        self._deny = [_pattern(p) for p in rules.deny]
        self._extensions: list[tuple[str, list[Any]]] = []
        for i, ext in enumerate(cfg.forward.context.extensions):
            path = ext.get("json_path") if isinstance(ext, dict) else None
            if not isinstance(path, str):
                raise ValueError(f"authorization.forward.context.extensions[{i}]: needs json_path")
            name = ext.get("name") or header_name_from_path(path)
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(
                    f"authorization.forward.context.extensions[{i}]: {name!r} is not a header"
                    " name (give `name`)"
                )
            self._extensions.append((CONTEXT_PREFIX + name, _steps(path)))

    def forwarded_headers(
        self,
        headers: Mapping[str, str],
        endpoint: str,
        id: str,
        extensions: Optional[dict[str, Any]] = None,
    ) -> dict[str, str]:
        """Exactly the headers the callout is sent for this request."""
        out: dict[str, str] = {}
        if self._allow:
            for name, value in headers.items():
                lowered = name.lower()
                if (
                    lowered in _NEVER
                    or lowered.startswith(CONTEXT_PREFIX.lower())
                    or any(c in value for c in "\r\n\0")
                    or not any(p.fullmatch(name) for p in self._allow)
                    or any(p.fullmatch(name) for p in self._deny)
                ):
                    continue
                out[name] = value
        context = self.cfg.forward.context
        if context.endpoint_type:
            out[CONTEXT_PREFIX + "Endpoint-Type"] = str(getattr(endpoint, "value", endpoint))
        if context.id:
            out[CONTEXT_PREFIX + "Id"] = _header_value(id)
        if extensions is not None:
            for name, steps in self._extensions:
                value = _lookup(extensions, steps)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    value = json.dumps(value)
                elif isinstance(value, bool):
                    value = "true" if value else "false"
                if isinstance(value, str):
                    out[name] = _header_value(value)
        return out

    def restrictions(
        self,
        headers: Mapping[str, str],
        endpoint: str,
        id: str,
        extensions: Optional[dict[str, Any]] = None,
    ) -> dict[str, Any]:
        """The service's JSON object, unvalidated (the caller parses it), or: 401/403 when the
        service says so in htsget error form, UpstreamError when it fails or answers oddly."""
        sent = self.forwarded_headers(headers, endpoint, id, extensions)
        try:
            doc = self._http.fetch(self.url, sent).data
        except HttpStatusError as err:
            raise self._refusal(err) from None
        if not isinstance(doc, dict):
            raise UpstreamError(f"GET {safe_url(self.url)}: the answer is not a JSON object")
        return copy.deepcopy(doc)

    @staticmethod
    def _refusal(err: HttpStatusError) -> Exception:
        if err.upstream_status not in (401, 403):
            return err
        kind = InvalidAuthentication if err.upstream_status == 401 else PermissionDenied
        body = err.body.get("htsget") if isinstance(err.body, dict) else None
        message = body.get("message") if isinstance(body, dict) else None
        if isinstance(message, str) and message.strip():
            clean = "".join(c if c.isprintable() else " " for c in message)[:_MAX_MESSAGE]
            return kind(clean)
        if err.upstream_status == 401:
            return kind("the authorization service refused the credentials")
        return kind("the authorization service denied access")


class StaticRestrictions:
    """A restrictions file read once at start; every request gets the same document."""

    def __init__(self, cfg: AuthorizationConfig) -> None:
        if not cfg.path:
            raise ValueError("authorization.path: required by kind = 'static'")
        self.path = cfg.path
        try:
            with open(cfg.path, "rb") as fh:
                doc = json.load(fh)
        except OSError as err:
            raise ValueError(
                f"{cfg.path}: cannot read the restrictions file ({err.strerror})"
            ) from None
        except ValueError as err:
            raise ValueError(f"{cfg.path}: not JSON ({err})") from None
        if not isinstance(doc, dict):
            raise ValueError(f"{cfg.path}: expected a JSON object")
        self._doc = doc

    def restrictions(
        self,
        headers: Mapping[str, str],
        endpoint: str,
        id: str,
        extensions: Optional[dict[str, Any]] = None,
    ) -> dict[str, Any]:
        """The file's document (a copy: callers may not change what the next one sees)."""
        return copy.deepcopy(self._doc)
