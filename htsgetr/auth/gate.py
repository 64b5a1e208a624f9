"""One server's [auth] as objects: token validation, where restrictions come from, and the
/data url signer. No Flask: the HTTP hooks (`api.auth`) and `htsgetr config check` use it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from ..config import NGINX_DIRECT, Config
from ..protocol import UpstreamError
from .callout import AuthorizationCallout, StaticRestrictions
from .jwt import TokenValidator, bearer_token
from .passport import PassportVerifier
from .rules import Grant, parse_restrictions
from .schema import AuthConfig, DataUrlConfig
from .signing import SECRET_ENV, UrlSigner, shared_secret


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


def url_signing(config: Config) -> Optional[DataUrlConfig]:
    """How /data urls are signed, or None when they are not: signed when any [auth] table is
    set (its first table's data_urls, the same secret on both servers), and always with
    accel = "nginx-direct", where nginx sends any file under a root it is given: the
    signature is what tells it which."""
    tables = config.auth_tables()
    if tables:
        return tables[0].data_urls
    if config.data_server.accel == NGINX_DIRECT:
        return DataUrlConfig()
    return None


def missing_secret(config: Config, env: Mapping[str, str]) -> Optional[str]:
    """Why this configuration cannot start with several workers, replicas or a front nginx:
    urls are signed but no secret is set, so each process would make its own."""
    urls = url_signing(config)
    if urls is None or urls.secret or env.get(SECRET_ENV):
        return None
    why = "auth is on" if config.auth_tables() else f'accel = "{NGINX_DIRECT}"'
    return (f"{why}: set auth.data_urls.secret or {SECRET_ENV}, the same on every worker,"
            " replica and front nginx, so /data urls signed by one verify on another")


def build(config: Config, role: str) -> AccessControl:
    """The gates and signer a server of `role` needs (ValueError: a key file that is bad)."""
    ticket_auth = config.auth_for("ticket")
    data_auth = config.data_server.auth
    urls = url_signing(config)
    signer = None
    if urls is not None:
        keys = [shared_secret(urls.secret)] + list(urls.previous_secrets)
        signer = UrlSigner(keys, urls.expires)
    ticket = Gate(ticket_auth) if ticket_auth is not None and role != "data" else None
    data = None
    if data_auth is not None and data_auth.jwt is not None and role != "ticket":
        data = Gate(data_auth)
    return AccessControl(ticket, data, signer)


def check(config: Config) -> None:
    """Build every [auth] table once, so a bad key or restrictions file is refused at start
    and at reload (ValueError naming the file) instead of on the first request."""
    for auth in config.auth_tables():
        Gate(auth)
