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

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union
from urllib.parse import unquote

from flask import Flask, current_app, g, request

from ..auth.callout import AuthorizationCallout, StaticRestrictions
from ..auth.jwt import TokenValidator, bearer_token
from ..auth.passport import PassportVerifier
from ..auth.rules import Grant, decide, hint, parse_restrictions
from ..auth.schema import AuthConfig
from ..auth.signing import UrlSigner, shared_secret
from ..config import Config
from ..protocol import Query, UpstreamError

EXTENSION = "htsgetr.auth"


@dataclass
class Identity:
    """Who called: the validated claims and the token (never logged)."""

    claims: dict[str, Any] = field(default_factory=dict)
    token: Optional[str] = None


class Gate:
    """One server's [auth]: token validation and where restrictions come from."""

    def __init__(self, auth: AuthConfig) -> None:
        self.auth = auth
        self.validator = TokenValidator(auth) if auth.jwt is not None else None
        self.source: Union[StaticRestrictions, AuthorizationCallout, None] = None
        if auth.authorization is not None:
            if auth.authorization.kind == "static":
                self.source = StaticRestrictions(auth.authorization)
                self.static_grants = parse_restrictions(self.source.restrictions({}, "", ""))
            else:
                self.source = AuthorizationCallout(auth.authorization)
        self.passports = (
            PassportVerifier(auth.passports, auth.algorithms, auth.leeway)
            if auth.passports is not None
            else None
        )

    def is_public(self, endpoint: str) -> bool:
        return endpoint in self.auth.public_endpoints

    def authenticate(self, headers: Mapping[str, str]) -> Identity:
        if self.validator is None:
            return Identity()
        token = bearer_token(headers.get("Authorization"))
        return Identity(self.validator.validate(token), token)

    def grants(
        self, identity: Identity, headers: Mapping[str, str], endpoint: str, id: str
    ) -> Optional[list[Grant]]:
        """The whitelist for this caller and ID; None: a valid token opens everything."""
        if self.source is None and self.passports is None:
            return None
        out: list[Grant] = []
        if isinstance(self.source, StaticRestrictions):
            out += self.static_grants
        elif self.source is not None:
            doc = self.source.restrictions(headers, endpoint, id)
            try:
                out += parse_restrictions(doc)
            except ValueError as err:
                raise UpstreamError(f"the authorization service answered badly: {err}") from None
        if self.passports is not None and identity.token is not None:
            visas = self.passports.grants(identity.claims, identity.token)
            if visas:
                out += parse_restrictions({"version": 1, "htsgetAuth": visas})
        return out


@dataclass
class AccessControl:
    ticket: Optional[Gate]
    data: Optional[Gate]  # only an explicit [data_server.auth] with a jwt
    signer: Optional[UrlSigner]


def build(config: Config, role: str) -> AccessControl:
    """The gates and signer a server of `role` needs (ValueError: a key file that is bad)."""
    ticket_auth = config.auth_for("ticket")
    data_auth = config.data_server.auth
    tables = config.auth_tables()
    signer = None
    if tables:  # the first table's data_urls: the same secret on both servers
        urls = tables[0].data_urls
        keys = [shared_secret(urls.secret)] + list(urls.previous_secrets)
        signer = UrlSigner(keys, urls.expires)
    ticket = Gate(ticket_auth) if ticket_auth is not None and role != "data" else None
    data = None
    if data_auth is not None and data_auth.jwt is not None and role != "ticket":
        data = Gate(data_auth)
    return AccessControl(ticket, data, signer)


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
            g.htsget_identity = access.data.authenticate(request.headers)
        return
    endpoint = _endpoint_name()
    gate = access.ticket
    if endpoint is None or gate is None or gate.is_public(endpoint):
        return
    g.htsget_identity = gate.authenticate(request.headers)


def authorize(query: Query) -> tuple[Query, Optional[list[Any]]]:
    """The query this caller may run, and the `allowed` hint for the ticket (or None)."""
    gate = _access().ticket
    identity: Optional[Identity] = g.get("htsget_identity")
    if gate is None or identity is None:  # auth off, or a public endpoint
        return query, None
    grants = gate.grants(identity, request.headers, query.endpoint.value, query.id)
    if grants is None:
        return query, None
    decision = decide(query, grants, gate.auth.suppress_errors)
    if gate.auth.suppress_errors and gate.auth.add_hint:
        return decision.query, hint(decision)
    return decision.query, None


def sign(url: str, headers: Optional[Mapping[str, str]], data_base: str) -> str:
    """`url` with its signature when it is one of our /data urls and signing is on."""
    signer = _access().signer
    prefix = data_base + "/data/"
    if signer is None or not url.startswith(prefix):
        return url
    path = unquote(url[len(prefix):].split("?", 1)[0])
    query = signer.sign(path, (headers or {}).get("Range", ""))
    return url + ("&" if "?" in url else "?") + query


def register(app: Flask, config: Config, role: str) -> None:
    app.extensions[EXTENSION] = build(config, role)
    app.before_request(_before)
