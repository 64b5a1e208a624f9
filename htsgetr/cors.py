"""CORS per server with htsget-rs's keys (`[ticket_server.cors]`, `[data_server.cors]`).

`allow_origins`, `allow_headers`, `allow_methods` take a list, "All" or "Mirror" (echo what the
request asked for); `expose_headers` a list or "All". The older `cors_origins` list stays
valid and is used when `cors.allow_origins` is unset. Browsers (igv.js) need preflight
answered for `Range` and `Authorization` on both the ticket and the data endpoints.

Defaults follow the htsget spec's CORS section (and htsget-rs's defaults): a preflight echoes
the headers the browser asks for in `Access-Control-Request-Headers` (a fixed list drops any
track that sends one more header, e.g. `X-Request-Id`) and may be cached for 30 days. An
explicit `allow_headers` list still wins: then only those headers pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .typed_config import _Ctx, _opt

ALL, MIRROR = "All", "Mirror"
#: unset `allow_headers`: echo the requested headers (htsget spec, CORS)
DEFAULT_HEADERS = MIRROR
DEFAULT_METHODS = ["GET", "HEAD", "POST", "OPTIONS"]
DEFAULT_EXPOSE = ["Content-Range", "Content-Length", "Accept-Ranges", "ETag", "X-Request-ID"]
#: the htsget spec's preflight lifetime: 30 days
THIRTY_DAYS = 30 * 24 * 3600

def _list_or(*keywords: str) -> Any:
    def check(value: Any, key: str, ctx: _Ctx) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            for word in keywords:
                if value.lower() == word.lower():
                    return word
            raise ctx.error(key, f"{value!r}: expected a list or one of {', '.join(keywords)}")
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ctx.error(key, "expected a list of strings or one of " + ", ".join(keywords))
        return list(value)

    return check


@dataclass
class CorsConfig:
    """Cross-origin access (htsget-rs keys); unset keys keep htsgetr's defaults."""

    allow_origins: Any = _opt(None, 'list, "All" or "Mirror" (default: cors_origins)',
                              check=_list_or(ALL, MIRROR))
    allow_headers: Any = _opt(None, 'list, "All" or "Mirror" (default: Mirror, the headers'
                              ' a preflight asks for)', check=_list_or(ALL, MIRROR))
    allow_methods: Any = _opt(None, 'list, "All" or "Mirror" (default: GET, HEAD, POST,'
                              ' OPTIONS)', check=_list_or(ALL, MIRROR))
    expose_headers: Any = _opt(None, 'list or "All" (default: Content-Range, Content-Length,'
                               ' Accept-Ranges, ETag, X-Request-ID)', check=_list_or(ALL))
    allow_credentials: bool = _opt(False, "let browsers send cookies / Authorization")
    max_age: int = _opt(THIRTY_DAYS, "seconds a preflight answer may be cached (default: 30"
                        " days, as the htsget spec asks)", min=0)


def flask_cors_options(cors: CorsConfig, legacy_origins: Optional[list[str]]) -> dict[str, Any]:
    """Keyword arguments for flask_cors.CORS ("*" headers: flask-cors echoes the requested
    ones that match, which is htsget-rs's "Mirror" and the htsget spec's default)."""
    origins = cors.allow_origins if cors.allow_origins is not None else legacy_origins or []
    methods = cors.allow_methods if cors.allow_methods is not None else DEFAULT_METHODS
    headers = cors.allow_headers if cors.allow_headers is not None else DEFAULT_HEADERS
    expose = cors.expose_headers if cors.expose_headers is not None else DEFAULT_EXPOSE
    any_origin = origins in (ALL, MIRROR) or origins == ["*"]
    return {
        "origins": "*" if any_origin else origins,
        "allow_headers": "*" if headers in (ALL, MIRROR) else headers,
        "methods": "*" if methods in (ALL, MIRROR) else methods,
        "expose_headers": "*" if expose == ALL else expose,
        "supports_credentials": cors.allow_credentials,
        "max_age": cors.max_age,
        "vary_header": True,
        # "All" without credentials answers a literal "*"; "Mirror" (and any origin with
        # credentials, where browsers refuse "*") echoes the request's origin
        "send_wildcard": any_origin and origins != MIRROR and not cors.allow_credentials,
    }
