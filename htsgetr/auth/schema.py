"""The `[auth]` configuration schema: htsget-rs's keys and meaning, plus what a shared
identity provider needs (leeway, an algorithm allow-list, Passports, signed /data urls).

`[auth]` applies to both servers; `[ticket_server.auth]` / `[data_server.auth]` replace it for
one of them (as in htsget-rs). Only dataclasses and self-contained checks live here: the
validators that use them are `auth.jwt`, `auth.callout`, `auth.passport`, `auth.rules` and
`auth.signing`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from ..typed_config import _Ctx, _join, _opt, check_http_url

#: asymmetric JWS algorithms only: never `none`, never HS* (no RS/HS key confusion)
ASYMMETRIC_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip
#: endpoints that may be made public
ENDPOINTS = ("service-info", "reads", "variants", "sequences")


def _check_algorithms(value: list[str], key: str, ctx: _Ctx) -> list[str]:
    if not value:
        raise ctx.error(key, "at least one algorithm is needed")
    for i, alg in enumerate(value):
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise ctx.error(
                f"{key}[{i}]",
                f"{alg!r} is not allowed (one of {', '.join(ASYMMETRIC_ALGORITHMS)};"
                " 'none' and HMAC algorithms never are)",
            )
    return value


def _check_endpoints(value: list[str], key: str, ctx: _Ctx) -> list[str]:
    for i, name in enumerate(value):
        if name not in ENDPOINTS:
            raise ctx.error(f"{key}[{i}]", f"{name!r} is not one of {', '.join(ENDPOINTS)}")
    return value


def _check_patterns(value: list[str], key: str, ctx: _Ctx) -> list[str]:
    for i, pattern in enumerate(value):
        if not pattern or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~?-]+", pattern):
            raise ctx.error(f"{key}[{i}]", f"{pattern!r} is not a header name pattern")
    return value


@dataclass
class HttpClientConfig:
    """How we call an identity or authorization service (htsget-rs's `http` table)."""

    root_store: Optional[str] = _opt(None, "PEM CA bundle to trust (default: the system's)",
                                     path=True)
    cert: Optional[str] = _opt(None, "PEM client certificate (mutual TLS)", path=True)
    key: Optional[str] = _opt(None, "PEM private key of `cert`", path=True)
    use_cache: bool = _opt(True, "cache answers as their Cache-Control / Expires allow")
    timeout: float = _opt(5.0, "seconds per request", min=0.001)

    def _validate(self, key: str, ctx: _Ctx) -> None:
        if bool(self.cert) != bool(self.key):
            raise ctx.error(_join(key, "key" if self.cert else "cert"), "cert and key go together")


@dataclass
class JwtConfig:
    """Where the keys that sign tokens come from: a JWKS URL or one PEM public key."""

    kind: str = _opt("jwks", "jwks | public_key", choices=("jwks", "public_key"))
    url: Optional[str] = _opt(None, "jwks: the JWKS URL", check=check_http_url)
    path: Optional[str] = _opt(None, "public_key: PEM file (RSA, EC or Ed25519)", path=True)
    http: HttpClientConfig = _opt(doc="jwks: HTTP client options", factory=HttpClientConfig)
    #: the JWKS is fetched again on an unknown `kid`, at most once per this many seconds
    refetch_interval: float = _opt(30.0, "jwks: least seconds between fetches for unknown kids",
                                   min=0)

    def _validate(self, key: str, ctx: _Ctx) -> None:
        needed = "url" if self.kind == "jwks" else "path"
        if not getattr(self, needed):
            raise ctx.error(_join(key, needed), f"required by kind = {self.kind!r}")


@dataclass
class HeaderRules:
    allow: list[str] = _opt(doc="header name patterns (* and ?) forwarded", factory=list,
                            check=_check_patterns)
    deny: list[str] = _opt(doc="patterns never forwarded (applied after allow)", factory=list,
                           check=_check_patterns)


@dataclass
class ContextRules:
    endpoint_type: bool = _opt(False, "send Htsget-Context-Endpoint-Type: reads | variants")
    id: bool = _opt(False, "send Htsget-Context-Id: the requested ID")
    #: htsget-rs: JSONPath values of request extensions (AWS Lambda events); accepted, and
    #: applied where a request carries extensions
    extensions: list[dict[str, str]] = _opt(doc="[{json_path, name}] from request extensions",
                                            factory=list)


@dataclass
class ForwardConfig:
    headers: HeaderRules = _opt(doc="client headers sent to the callout", factory=HeaderRules)
    context: ContextRules = _opt(doc="Htsget-Context-* headers", factory=ContextRules)


@dataclass
class AuthorizationConfig:
    """Where restrictions come from: a static JSON file or a callout per request."""

    kind: str = _opt("static", "static | callout", choices=("static", "callout"))
    path: Optional[str] = _opt(None, "static: the restrictions JSON file", path=True)
    url: Optional[str] = _opt(None, "callout: URL asked (GET) for the restrictions",
                              check=check_http_url)
    forward: ForwardConfig = _opt(doc="callout: what the request forwards", factory=ForwardConfig)
    http: HttpClientConfig = _opt(doc="callout: HTTP client options", factory=HttpClientConfig)

    def _validate(self, key: str, ctx: _Ctx) -> None:
        needed = "path" if self.kind == "static" else "url"
        if not getattr(self, needed):
            raise ctx.error(_join(key, needed), f"required by kind = {self.kind!r}")


@dataclass
class VisaIssuerConfig:
    """An issuer of GA4GH visas we trust, and where its signing keys are."""

    iss: str = _opt("", "the visa's `iss` claim, exactly")
    jwks: Optional[str] = _opt(None, "its JWKS URL", check=check_http_url)
    path: Optional[str] = _opt(None, "or its PEM public key", path=True)

    def _validate(self, key: str, ctx: _Ctx) -> None:
        if not self.iss:
            raise ctx.error(_join(key, "iss"), "required")
        if bool(self.jwks) == bool(self.path):
            raise ctx.error(_join(key, "jwks"), "give exactly one of jwks and path")


@dataclass
class DatasetGrantConfig:
    """The IDs a ControlledAccessGrants visa value opens (one of id, prefix, regex)."""

    id: Optional[str] = _opt(None, "exactly this ID")
    prefix: Optional[str] = _opt(None, "IDs starting with this")
    regex: Optional[str] = _opt(None, "IDs this regex matches (whole ID)")

    def _validate(self, key: str, ctx: _Ctx) -> None:
        given = [n for n in ("id", "prefix", "regex") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ctx.error(key, "give exactly one of id, prefix, regex")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as err:
                raise ctx.error(_join(key, "regex"), f"bad regular expression: {err}") from None


@dataclass
class PassportConfig:
    """GA4GH Passports: ControlledAccessGrants visas open datasets (beyond htsget-rs)."""

    trusted_issuers: list[VisaIssuerConfig] = _opt(doc="visa issuers we trust", factory=list)
    datasets: dict[str, DatasetGrantConfig] = _opt(
        doc="visa `value` -> the IDs it opens", factory=dict
    )
    #: when the token carries no `ga4gh_passport_v1`, ask this userinfo endpoint with it
    userinfo_url: Optional[str] = _opt(None, "userinfo endpoint holding the passport",
                                       check=check_http_url)
    http: HttpClientConfig = _opt(doc="HTTP client options (JWKS, userinfo)",
                                  factory=HttpClientConfig)


@dataclass
class DataUrlConfig:
    """Signed /data urls (HMAC-SHA256 over method, path, range and expiry)."""

    secret: Optional[str] = _opt(
        None, "signing secret (default: $HTSGET_DATA_URL_SECRET; else one per server start)"
    )
    previous_secrets: list[str] = _opt(doc="still accepted, never used to sign (rotation)",
                                       factory=list)
    expires: int = _opt(600, "seconds a signed url stays valid", min=1)


@dataclass
class AuthConfig:
    """Bearer-token authentication and authorization (htsget-rs's `[auth]`)."""

    jwt: Optional[JwtConfig] = _opt(None, "token signing keys: { kind = 'jwks', url = ... } or"
                                    " { kind = 'public_key', path = ... }")
    validate_audience: Optional[list[str]] = _opt(None, "accepted `aud` values")
    validate_issuer: Optional[list[str]] = _opt(None, "accepted `iss` values")
    validate_subject: Optional[str] = _opt(None, "the required `sub`")
    leeway: float = _opt(30.0, "seconds of clock skew allowed for exp / nbf / iat", min=0)
    algorithms: list[str] = _opt(doc="accepted signature algorithms (asymmetric only)",
                                 factory=lambda: list(ASYMMETRIC_ALGORITHMS),
                                 check=_check_algorithms)
    authorization: Optional[AuthorizationConfig] = _opt(None, "restrictions: static or callout")
    suppress_errors: bool = _opt(False, "serve the allowed part of a request instead of 403")
    add_hint: bool = _opt(True, "with suppress_errors: list the allowed rules in the ticket")
    public_endpoints: list[str] = _opt(doc="endpoints that need no token",
                                       factory=lambda: ["service-info"], check=_check_endpoints)
    passports: Optional[PassportConfig] = _opt(None, "GA4GH Passport visas")
    data_urls: DataUrlConfig = _opt(doc="signed /data urls", factory=DataUrlConfig)

    def _validate(self, key: str, ctx: _Ctx) -> None:
        if self.jwt is None and self.authorization is None and self.passports is None:
            raise ctx.error(key, "needs jwt, authorization or passports")
