"""Authentication and authorization at the HTTP edge (Flask hooks; the decisions are in auth/).

- Ticket and service-info endpoints: a bearer token validated before the view runs (401
  `InvalidAuthentication`, with `WWW-Authenticate: Bearer`), unless the endpoint is public;
  the view then asks `authorize` for the query it parsed (403 `PermissionDenied`, or the
  query limited to the allowed intervals, which the engine cuts to the record).
- /data: with auth on anywhere, every request must carry a valid signature for exactly its
  path and Range (403 otherwise); `[data_server.auth]` with a `jwt` also demands a token.
- CORS preflight (OPTIONS) is never challenged: browsers send it without credentials.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional
from urllib.parse import unquote

from flask import Flask, current_app, g, request

from ..auth.gate import AccessControl, Identity, build
from ..auth.rules import decide, hint
from ..auth.signing import UrlSigner
from ..config import Config
from ..protocol import Query

EXTENSION = "htsgetr.auth"


def _access() -> AccessControl:
    access: AccessControl = current_app.extensions[EXTENSION]
    return access


def _endpoint_name() -> Optional[str]:
    """service-info, reads, variants or sequences for our ticket-side views."""
    if request.blueprint == "service_info":
        return "service-info"
    if request.blueprint == "tickets" and request.endpoint:
        return request.endpoint.split(".", 1)[1].rsplit("_", 1)[0]
    return None


def _before() -> None:
    if request.method == "OPTIONS":
        return
    access = _access()
    if request.blueprint == "data":
        if access.signer is not None:
            path = (request.view_args or {}).get("path", "")
            access.signer.verify(request.method, path, request.headers.get("Range"), request.args)
        if access.data is not None:
            g.htsget_identity = access.data.authenticate(dict(request.headers))
        return
    endpoint = _endpoint_name()
    gate = access.ticket
    if endpoint is None or gate is None or gate.is_public(endpoint):
        return
    g.htsget_identity = gate.authenticate(dict(request.headers))


def authorize(query: Query) -> tuple[Query, Optional[list[Any]]]:
    """The query this caller may run, and the `allowed` hint for the ticket (or None)."""
    gate = _access().ticket
    identity: Optional[Identity] = g.get("htsget_identity")
    if gate is None or identity is None:  # auth off, or a public endpoint
        return query, None
    grants = gate.grants(identity, dict(request.headers), query.endpoint.value, query.id)
    if grants is None:
        return query, None
    decision = decide(query, grants, gate.auth.suppress_errors)
    if gate.auth.suppress_errors and gate.auth.add_hint:
        return decision.query, hint(decision)
    return decision.query, None


def signer() -> Optional[UrlSigner]:
    """This app's /data url signer (None: signing is off)."""
    return _access().signer


def sign_url(url_signer: Optional[UrlSigner], url: str, headers: Optional[Mapping[str, str]],
             data_base: str) -> str:
    """`url` with its signature when it is one of our /data urls and signing is on."""
    prefix = data_base + "/data/"
    if url_signer is None or not url.startswith(prefix):
        return url
    path = unquote(url[len(prefix):].split("?", 1)[0])
    query = url_signer.sign(path, (headers or {}).get("Range", ""))
    return url + ("&" if "?" in url else "?") + query


def sign(url: str, headers: Optional[Mapping[str, str]], data_base: str) -> str:
    """`sign_url` with this app's signer."""
    return sign_url(signer(), url, headers, data_base)


def register(app: Flask, config: Config, role: str) -> None:
    access = app.extensions[EXTENSION] = build(config, role)
    if access.ticket is not None or access.data is not None or access.signer is not None:
        app.before_request(_before)  # with auth off it has nothing to check: not called
