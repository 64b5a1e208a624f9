"""Identity side of auth: HttpCache, bearer tokens / JWT validation, callout, Passports.

Real parts only: keys from `cryptography`, tokens signed with authlib, and JWKS / callout /
userinfo answers from a real HTTP server on 127.0.0.1 that counts its requests.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import logging
import socket
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from htsgetr.auth.callout import AuthorizationCallout, StaticRestrictions, header_name_from_path
from htsgetr.auth.http_cache import HttpCache, HttpStatusError, freshness
from htsgetr.auth.jwt import StaticKeys, TokenValidator, bearer_token, public_key, verify_jwt
from htsgetr.auth.passport import PassportVerifier
from htsgetr.auth.schema import (
    AuthConfig,
    AuthorizationConfig,
    ContextRules,
    DatasetGrantConfig,
    ForwardConfig,
    HeaderRules,
    HttpClientConfig,
    JwtConfig,
    PassportConfig,
    VisaIssuerConfig,
)
from htsgetr.protocol import InvalidAuthentication, PermissionDenied, UpstreamError

with warnings.catch_warnings():
    import authlib.deprecate  # noqa: F401 - it installs its "always" filter on import

    warnings.simplefilter("ignore", DeprecationWarning)
    from authlib.jose import ECKey, JsonWebSignature, OKPKey, RSAKey

# --------------------------------------------------------------------------- helpers


class Clock:
    """A settable clock for every component (token times, cache freshness, refetch rate)."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
_JWK_CLASS = {rsa.RSAPrivateKey: RSAKey, ec.EllipticCurvePrivateKey: ECKey,
              ed25519.Ed25519PrivateKey: OKPKey}  # fmt: skip


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(key: Any, claims: dict[str, Any], alg: str = "RS256", kid: Optional[str] = "k1",
         **header: Any) -> str:  # fmt: skip
    protected = {"alg": alg, **({"kid": kid} if kid else {}), **header}
    token = JsonWebSignature(algorithms=[alg]).serialize_compact(
        protected, json.dumps(claims), key
    )
    return token.decode()


def hs256(secret: bytes, claims: dict[str, Any], kid: Optional[str] = "k1") -> str:
    """HS256 by hand: authlib (rightly) refuses a PEM as an HMAC secret."""
    head = b64(json.dumps({"alg": "HS256", **({"kid": kid} if kid else {})}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def unsigned(claims: dict[str, Any]) -> str:
    head = b64(json.dumps({"alg": "none", "kid": "k1"}).encode())
    return f"{head}.{b64(json.dumps(claims).encode())}."


def jwk(private_key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    cls = next(c for t, c in _JWK_CLASS.items() if isinstance(private_key, t))
    return dict(cls.import_key(private_key.public_key()).as_dict(kid=kid, **extra))


def pem(private_key: Any) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def refused(call: Callable[[], Any], token: str, match: str,
            kind: type[Exception] = InvalidAuthentication) -> Exception:  # fmt: skip
    """`call` raises `kind` matching `match`, and no part of the token is in the message."""
    with pytest.raises(kind, match=match) as info:
        call()
    message = str(info.value)
    assert token not in message
    for part in token.split("."):
        if len(part) >= 8:
            assert part not in message
    return info.value


# --------------------------------------------------------------------------- test server


class Route:
    def __init__(self, body: Any, status: int = 200, headers: Optional[dict[str, str]] = None,
                 raw: Optional[bytes] = None, delay: float = 0.0, length: bool = True,
                 check: Optional[Callable[[dict[str, str]], Optional[tuple[int, Any]]]] = None
                 ) -> None:  # fmt: skip
        self.body, self.status, self.headers = body, status, headers or {}
        self.raw, self.delay, self.check, self.length = raw, delay, check, length


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up early (the size-bound test) is expected


class Upstream:
    """JWKS / callout / userinfo answers on 127.0.0.1; counts requests, keeps their headers."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.counts: dict[str, int] = {}
        self.seen: dict[str, list[list[tuple[str, str]]]] = {}
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                upstream.counts[path] = upstream.counts.get(path, 0) + 1
                upstream.seen.setdefault(path, []).append(list(self.headers.items()))
                route = upstream.routes.get(path)
                if route is None:
                    status, body, headers = 404, b"{}", {"Content-Length": "2"}
                else:
                    time.sleep(route.delay)
                    status, data = route.status, route.body
                    if route.check is not None:
                        override = route.check(dict(self.headers.items()))
                        if override is not None:
                            status, data = override
                    body = route.raw if route.raw is not None else json.dumps(data).encode()
                    headers = dict(route.headers)
                    if route.length:
                        headers["Content-Length"] = str(len(body))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def route(self, path: str, body: Any = None, **kw: Any) -> str:
        self.routes[path] = Route(body, **kw)
        return self.base + path

    def count(self, path: str) -> int:
        return self.counts.get(path, 0)

    def last_headers(self, path: str) -> list[tuple[str, str]]:
        return self.seen[path][-1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def claims_at(clock: Clock, **extra: Any) -> dict[str, Any]:
    return {"iss": "https://idp", "aud": "htsget", "sub": "alice", "exp": clock.now + 600,
            "iat": clock.now, **extra}  # fmt: skip


def jwks_validator(upstream: Upstream, clock: Clock, keys: list[dict[str, Any]],
                   max_age: Optional[int] = 3600, interval: float = 30.0, **auth: Any
                   ) -> TokenValidator:  # fmt: skip
    headers = {"Cache-Control": f"max-age={max_age}"} if max_age is not None else {}
    url = upstream.route("/jwks", {"keys": keys}, headers=headers)
    cfg = AuthConfig(jwt=JwtConfig(kind="jwks", url=url, refetch_interval=interval), **auth)
    return TokenValidator(cfg, clock=clock)


def pem_validator(tmp_path: Path, clock: Clock, key: Any = RSA_KEY, **auth: Any
                  ) -> TokenValidator:  # fmt: skip
    path = tmp_path / "pub.pem"
    path.write_bytes(pem(key))
    return TokenValidator(AuthConfig(jwt=JwtConfig(kind="public_key", path=str(path)), **auth),
                          clock=clock)  # fmt: skip


# --------------------------------------------------------------------------- bearer_token


def test_bearer_token_parses_the_header() -> None:
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer   abc.def-_~+/ghi==  ") == "abc.def-_~+/ghi=="
    assert bearer_token("BEARER x") == "x"


@pytest.mark.parametrize("header, match", [
    (None, "missing"), ("", "missing"), ("   ", "missing"),
    ("Basic dXNlcjpzZWNyZXRwYXNz", "not Bearer"), ("Bearer", "malformed"),
    ("Bearer ", "malformed"), ("Bearer a b", "malformed"), ("Bearer sec{ret}tok", "malformed"),
    ("Token secrettokenvalue", "not Bearer"),
])  # fmt: skip
def test_bearer_token_refusals(header: Optional[str], match: str) -> None:
    err = refused(lambda: bearer_token(header), header or "\0", match)
    assert "secret" not in str(err) and "dXNlcj" not in str(err)


# --------------------------------------------------------------------------- signatures


@pytest.mark.parametrize("key, alg", [(RSA_KEY, "RS256"), (RSA_KEY, "PS384"),
                                      (EC_KEY, "ES256"), (ED_KEY, "EdDSA")])  # fmt: skip
def test_valid_tokens_from_jwks(upstream: Upstream, clock: Clock, key: Any, alg: str) -> None:
    validator = jwks_validator(upstream, clock, [jwk(key, "k1")], validate_audience=["htsget"],
                               validate_issuer=["https://idp"], validate_subject="alice")
    claims = validator.validate(sign(key, claims_at(clock), alg))
    assert claims["sub"] == "alice" and claims["aud"] == "htsget"


@pytest.mark.parametrize("key, alg", [(RSA_KEY, "RS256"), (EC_KEY, "ES256"), (ED_KEY, "EdDSA")])
def test_valid_tokens_from_pem(tmp_path: Path, clock: Clock, key: Any, alg: str) -> None:
    validator = pem_validator(tmp_path, clock, key)
    assert validator.validate(sign(key, claims_at(clock), alg, kid=None))["iss"] == "https://idp"
    # a PEM key is found whatever kid the token names
    assert validator.validate(sign(key, claims_at(clock), alg, kid="any"))["sub"] == "alice"


def test_certificate_pem_is_accepted(tmp_path: Path, clock: Clock) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(RSA_KEY.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(RSA_KEY, hashes.SHA256()))
    path = tmp_path / "cert.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    validator = TokenValidator(AuthConfig(jwt=JwtConfig(kind="public_key", path=str(path))),
                               clock=clock)  # fmt: skip
    assert validator.validate(sign(RSA_KEY, claims_at(clock)))["sub"] == "alice"


def test_claim_refusals(upstream: Upstream, clock: Clock) -> None:
    validator = jwks_validator(upstream, clock, [jwk(RSA_KEY, "k1")], validate_audience=["htsget"],
                               validate_issuer=["https://idp", "https://other"],
                               validate_subject="alice", leeway=30)
    ok = claims_at(clock)

    def check(claims: dict[str, Any], match: str) -> None:
        token = sign(RSA_KEY, claims)
        refused(lambda: validator.validate(token), token, match)

    check({**ok, "exp": clock.now - 31}, "expired")
    check({**ok, "exp": clock.now - 30}, "expired")
    check({**ok, "nbf": clock.now + 31}, "not yet valid")
    check({**ok, "aud": "someone-else"}, "audience")
    check({**ok, "aud": ["a", "b"]}, "audience")
    check({k: v for k, v in ok.items() if k != "aud"}, "audience")
    check({**ok, "iss": "https://evil"}, "issuer")
    check({k: v for k, v in ok.items() if k != "iss"}, "issuer")
    check({**ok, "sub": "bob"}, "subject")
    check({k: v for k, v in ok.items() if k != "exp"}, "no exp")
    check({**ok, "exp": "tomorrow"}, "malformed exp")
    check({**ok, "exp": True}, "malformed exp")
    # within leeway, and the other accepted forms
    assert validator.validate(sign(RSA_KEY, {**ok, "exp": clock.now - 29}))
    assert validator.validate(sign(RSA_KEY, {**ok, "nbf": clock.now + 29}))
    assert validator.validate(sign(RSA_KEY, {**ok, "aud": ["x", "htsget"]}))
    assert validator.validate(sign(RSA_KEY, {**ok, "iss": "https://other"}))


def test_without_claim_rules_any_iss_aud_sub_passes(tmp_path: Path, clock: Clock) -> None:
    validator = pem_validator(tmp_path, clock)
    claims = {"exp": clock.now + 60, "aud": "whoever", "iss": "x", "sub": "y"}
    assert validator.validate(sign(RSA_KEY, claims))["aud"] == "whoever"


def test_malformed_tokens(tmp_path: Path, clock: Clock) -> None:
    validator = pem_validator(tmp_path, clock)
    good = sign(RSA_KEY, claims_at(clock))
    head, body, sig = good.split(".")
    for token in ["", "abc", "a.b", f"{head}.{body}", f"{head}.{body}.{sig}.x",
                  f"{head}!.{body}.{sig}", f"{b64(b'not json')}.{body}.{sig}",
                  f"{b64(b'[1]')}.{body}.{sig}", f"{head}.{b64(b'[]')}.{sig}",
                  "x" * 300_000]:  # fmt: skip
        refused(lambda t=token: validator.validate(t), token or "\0", "malformed")


def test_bad_signatures(tmp_path: Path, upstream: Upstream, clock: Clock) -> None:
    validator = jwks_validator(upstream, clock, [jwk(RSA_KEY, "k1")])
    token = sign(RSA_KEY, claims_at(clock))
    head, body, sig = token.split(".")
    other_body = b64(json.dumps(claims_at(clock, sub="mallory")).encode())
    tampered = f"{head}.{other_body}.{sig}"
    refused(lambda: validator.validate(tampered), tampered, "bad signature")
    # another key under the same kid
    forged = sign(RSA_OTHER, claims_at(clock))
    refused(lambda: validator.validate(forged), forged, "bad signature")
    # and with a PEM key
    pem_val = pem_validator(tmp_path, clock)
    refused(lambda: pem_val.validate(forged), forged, "bad signature")


class CountingKeys(StaticKeys):
    calls = 0

    def keys_for(self, kid: Optional[str]) -> Any:
        self.calls += 1
        return super().keys_for(kid)


def test_none_and_hmac_are_refused_before_any_key_use(
    tmp_path: Path, upstream: Upstream, clock: Clock
) -> None:
    public_pem = pem(RSA_KEY)
    confused = hs256(public_pem, claims_at(clock))
    none = unsigned(claims_at(clock))
    keys = CountingKeys([public_key(RSA_KEY.public_key())])
    for token, alg in ((confused, "'HS256'"), (none, "'none'")):
        # even an allow-list that names them cannot let them through
        refused(lambda t=token: verify_jwt(t, keys, ["RS256", "HS256", "none"], now=clock.now),
                token, f"algorithm {alg} is not allowed")  # fmt: skip
    assert keys.calls == 0
    jwks = jwks_validator(upstream, clock, [jwk(RSA_KEY, "k1")])
    pem_val = pem_validator(tmp_path, clock)
    for validator in (jwks, pem_val):
        for token in (confused, none):
            refused(lambda t=token, v=validator: v.validate(t), token, "not allowed")
    assert upstream.count("/jwks") == 0  # refused before the keys were even fetched


def test_algorithm_allow_list_and_key_type(upstream: Upstream, clock: Clock) -> None:
    validator = jwks_validator(upstream, clock, [jwk(RSA_KEY, "k1"), jwk(EC_KEY, "k2")],
                               algorithms=["ES256"])  # fmt: skip
    rs = sign(RSA_KEY, claims_at(clock), "RS256")
    refused(lambda: validator.validate(rs), rs, "algorithm 'RS256' is not allowed")
    # an ES256 header naming the RSA key: the key type does not fit the algorithm
    mixed = sign(EC_KEY, claims_at(clock), "ES256", kid="k1")
    refused(lambda: validator.validate(mixed), mixed, "key type")
    assert validator.validate(sign(EC_KEY, claims_at(clock), "ES256", kid="k2"))
    # a caller's text in `alg` is not repeated
    odd = f"{b64(json.dumps({'alg': 'evil<script>', 'kid': 'k1'}).encode())}.{rs.split('.')[1]}.x"
    err = refused(lambda: validator.validate(odd), odd, "algorithm is not allowed")
    assert "evil" not in str(err)


def test_critical_header_parameters_are_refused(tmp_path: Path, clock: Clock) -> None:
    validator = pem_validator(tmp_path, clock)
    token = sign(RSA_KEY, claims_at(clock), crit=["kid"])
    refused(lambda: validator.validate(token), token, "critical header")


def test_jwk_alg_pin_and_use(upstream: Upstream, clock: Clock) -> None:
    keys = [jwk(RSA_KEY, "k1", alg="RS512"), jwk(EC_KEY, "k2", use="enc")]
    validator = jwks_validator(upstream, clock, keys)
    token = sign(RSA_KEY, claims_at(clock), "RS256")
    refused(lambda: validator.validate(token), token, "key type")
    assert validator.validate(sign(RSA_KEY, claims_at(clock), "RS512"))
    enc = sign(EC_KEY, claims_at(clock), "ES256", kid="k2")
    refused(lambda: validator.validate(enc), enc, "unknown key id")


def test_jwks_skips_unusable_keys(upstream: Upstream, clock: Clock) -> None:
    junk: list[Any] = [
        {"kty": "oct", "k": b64(b"secret"), "kid": "k1"},
        {"kty": "RSA", "kid": "k1"},
        "nonsense",
        {"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA", "kid": "k1"},
    ]
    validator = jwks_validator(upstream, clock, [*junk, jwk(RSA_KEY, "k1")])
    assert validator.validate(sign(RSA_KEY, claims_at(clock)))


# --------------------------------------------------------------------------- JWKS fetching


def test_jwks_cached_per_max_age_then_refetched(upstream: Upstream, clock: Clock) -> None:
    validator = jwks_validator(upstream, clock, [jwk(RSA_KEY, "k1")], max_age=120)
    assert upstream.count("/jwks") == 0  # lazy
    validator.validate(sign(RSA_KEY, claims_at(clock)))
    validator.validate(sign(RSA_KEY, claims_at(clock)))
    assert upstream.count("/jwks") == 1
    clock.advance(119)
    validator.validate(sign(RSA_KEY, claims_at(clock)))
    assert upstream.count("/jwks") == 1
    clock.advance(2)
    validator.validate(sign(RSA_KEY, claims_at(clock)))
    assert upstream.count("/jwks") == 2


@pytest.mark.parametrize("cache_control", [
    "no-store, max-age=600", "no-cache, max-age=600", "private, max-age=600", None,
])  # fmt: skip
def test_jwks_not_cached_when_not_allowed(
    upstream: Upstream, clock: Clock, cache_control: Optional[str]
) -> None:
    validator = jwks_validator(upstream, clock, [jwk(RSA_KEY, "k1")], max_age=None)
    if cache_control:
        upstream.routes["/jwks"].headers = {"Cache-Control": cache_control}
    for _ in range(3):
        validator.validate(sign(RSA_KEY, claims_at(clock)))
    assert upstream.count("/jwks") == 3


def test_unknown_kid_refetch_is_bounded(upstream: Upstream, clock: Clock) -> None:
    validator = jwks_validator(upstream, clock, [jwk(RSA_KEY, "k1")], interval=30)
    validator.validate(sign(RSA_KEY, claims_at(clock)))
    assert upstream.count("/jwks") == 1
    # the provider rotates in k2; right after a fetch a new kid waits for the interval
    upstream.routes["/jwks"].body = {"keys": [jwk(RSA_KEY, "k1"), jwk(EC_KEY, "k2")]}
    rotated = sign(EC_KEY, claims_at(clock), "ES256", kid="k2")
    refused(lambda: validator.validate(rotated), rotated, "unknown key id")
    assert upstream.count("/jwks") == 1
    clock.advance(31)
    assert validator.validate(sign(EC_KEY, claims_at(clock), "ES256", kid="k2"))  # one refetch
    assert upstream.count("/jwks") == 2
    # a stream of made-up kids: at most one extra fetch per interval
    for i in range(20):
        bogus = sign(RSA_KEY, claims_at(clock), kid=f"nope{i}")
        refused(lambda t=bogus: validator.validate(t), bogus, "unknown key id")
    assert upstream.count("/jwks") == 2
    clock.advance(30)
    for i in range(20):
        bogus = sign(RSA_KEY, claims_at(clock), kid=f"again{i}")
        refused(lambda t=bogus: validator.validate(t), bogus, "unknown key id")
    assert upstream.count("/jwks") == 3
    # the refetched set serves known kids from the cache
    validator.validate(sign(RSA_KEY, claims_at(clock)))
    assert upstream.count("/jwks") == 3


def test_unknown_kid_refetch_is_bounded_across_threads(upstream: Upstream, clock: Clock) -> None:
    validator = jwks_validator(upstream, clock, [jwk(RSA_KEY, "k1")], interval=30)
    validator.validate(sign(RSA_KEY, claims_at(clock)))
    clock.advance(31)
    bogus = sign(RSA_KEY, claims_at(clock), kid="nope")
    errors: list[Exception] = []

    def attempt() -> None:
        try:
            validator.validate(bogus)
        except InvalidAuthentication as err:
            errors.append(err)

    threads = [threading.Thread(target=attempt) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 16
    assert upstream.count("/jwks") == 2


def test_jwks_failures_are_upstream_errors(upstream: Upstream, clock: Clock) -> None:
    validator = jwks_validator(upstream, clock, [])
    upstream.routes["/jwks"] = Route({"error": "boom"}, status=500)
    token = sign(RSA_KEY, claims_at(clock))
    err = refused(lambda: validator.validate(token), token, "HTTP 500", UpstreamError)
    assert err.status == 502  # type: ignore[attr-defined]
    upstream.routes["/jwks"] = Route({"no": "keys"})
    refused(lambda: validator.validate(token), token, "not a JWKS", UpstreamError)
    upstream.routes["/jwks"] = Route(None, raw=b"<html>")
    refused(lambda: validator.validate(token), token, "not JSON", UpstreamError)


def test_public_key_file_errors_name_the_path(tmp_path: Path) -> None:
    def build(path: Path) -> TokenValidator:
        return TokenValidator(AuthConfig(jwt=JwtConfig(kind="public_key", path=str(path))))

    missing = tmp_path / "missing.pem"
    with pytest.raises(ValueError, match=f"{missing}: cannot read"):
        build(missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError, match=f"{garbage}: not a PEM public key"):
        build(garbage)
    private = tmp_path / "private.pem"
    private.write_bytes(RSA_KEY.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))  # fmt: skip
    with pytest.raises(ValueError, match=f"{private}: holds a private key"):
        build(private)
    directory = tmp_path / "dir.pem"
    directory.mkdir()
    with pytest.raises(ValueError, match=f"{directory}: cannot read"):
        build(directory)


# --------------------------------------------------------------------------- HttpCache


def test_freshness_rules() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now, usegmt=True)
    assert freshness({"Cache-Control": "max-age=60"}, now) == 60
    assert freshness({"Cache-Control": "public, max-age=60", "Age": "50"}, now) == 10
    assert freshness({"Cache-Control": "max-age=60", "Age": "60"}, now) is None
    assert freshness({"Cache-Control": "max-age=60, s-maxage=5"}, now) == 5
    assert freshness({"Cache-Control": "max-age=bogus"}, now) is None
    assert freshness({"Cache-Control": "no-store, max-age=60"}, now) is None
    assert freshness({"Cache-Control": "NO-CACHE, max-age=60"}, now) is None
    assert freshness({"Cache-Control": 'private="x", max-age=60'}, now) is None
    assert freshness({"Expires": email.utils.formatdate(now + 90, usegmt=True), "Date": date},
                     now) == 90  # fmt: skip
    assert freshness({"Expires": email.utils.formatdate(now + 90, usegmt=True)}, now) == 90
    assert freshness({"Expires": "0", "Date": date}, now) is None
    # Expires counts from the answer's Date, not from our clock (skewed here by 1000 s)
    assert freshness({"Date": email.utils.formatdate(now - 1000, usegmt=True),
                      "Expires": email.utils.formatdate(now - 900, usegmt=True)}, now) == 100
    assert freshness({"Expires": email.utils.formatdate(now + 90, usegmt=True),
                      "Cache-Control": "max-age=5"}, now) == 5  # fmt: skip
    assert freshness({"Pragma": "no-cache", "Expires": date}, now) is None
    assert freshness({"Cache-Control": "max-age=60", "Vary": "*"}, now) is None
    assert freshness({}, now) is None


def test_http_cache_expires_header(upstream: Upstream, clock: Clock) -> None:
    cache = HttpCache(clock=clock)
    # Expires counts from the answer's own Date, whatever our clock says
    date = time.time()
    url = upstream.route("/doc", {"a": 1}, headers={
        "Expires": email.utils.formatdate(date + 100, usegmt=True)})  # fmt: skip
    assert cache.get_json(url) == {"a": 1}
    clock.advance(90)
    assert cache.get_json(url) == {"a": 1}
    assert upstream.count("/doc") == 1
    clock.advance(20)
    cache.get_json(url)
    assert upstream.count("/doc") == 2


def test_http_cache_keys_on_headers_and_is_bounded(upstream: Upstream, clock: Clock) -> None:
    cache = HttpCache(clock=clock, max_entries=2)
    a = upstream.route("/a", {"a": 1}, headers={"Cache-Control": "max-age=60"})
    b = upstream.route("/b", {"b": 1}, headers={"Cache-Control": "max-age=60"})
    cache.get_json(a, {"X-User": "1"})
    cache.get_json(a, {"x-user": "1"})
    assert upstream.count("/a") == 1
    cache.get_json(a, {"X-User": "2"})
    assert upstream.count("/a") == 2
    assert len(cache) == 2
    cache.get_json(a, {"X-User": "1"})  # a hit: user 1 is now the most recently used
    cache.get_json(b)  # evicts the least recently used: /a with user 2
    assert len(cache) == 2
    cache.get_json(a, {"X-User": "1"})
    assert upstream.count("/a") == 2
    cache.get_json(a, {"X-User": "2"})
    assert upstream.count("/a") == 3


def test_http_cache_sends_no_netrc_credentials(
    upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    url = upstream.route("/n", {"a": 1})
    HttpCache().get_json(url)
    assert all(name.lower() != "authorization" for name, _ in upstream.last_headers("/n"))
    HttpCache().get_json(url, {"Authorization": "Bearer mine"})
    assert ("Authorization", "Bearer mine") in upstream.last_headers("/n")


def test_http_cache_use_cache_false(upstream: Upstream, clock: Clock) -> None:
    cache = HttpCache(HttpClientConfig(use_cache=False), clock=clock)
    url = upstream.route("/doc", {"a": 1}, headers={"Cache-Control": "max-age=60"})
    cache.get_json(url)
    cache.get_json(url)
    assert upstream.count("/doc") == 2


def test_http_cache_errors(upstream: Upstream) -> None:
    cache = HttpCache(HttpClientConfig(timeout=0.3))
    url = upstream.route("/e", {"htsget": {"error": "x", "message": "m"}}, status=418,
                         headers={"Cache-Control": "max-age=60"})  # fmt: skip
    with pytest.raises(HttpStatusError) as info:
        cache.get_json(url + "?api_key=hunter2")
    assert info.value.upstream_status == 418 and info.value.body["htsget"]["message"] == "m"
    assert "hunter2" not in str(info.value)
    with pytest.raises(HttpStatusError):  # errors are never cached
        cache.get_json(url)
    assert upstream.count("/e") == 2
    slow = upstream.route("/slow", {"a": 1}, delay=1.0)
    with pytest.raises(UpstreamError, match="timed out") as timeout:
        cache.get_json(slow)
    assert timeout.value.status == 504
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/x"
    with pytest.raises(UpstreamError, match="unreachable") as down:
        cache.get_json(closed)
    assert down.value.status == 503
    huge = b"[" + b"1," * 3_000_000 + b"1]"
    for length in (True, False):  # declared, or only found while reading
        big = upstream.route("/big", None, raw=huge, length=length)
        with pytest.raises(UpstreamError, match="too large"):
            cache.get_json(big)
    # a declared size is refused before reading
    upstream.route("/liar", None, raw=b"{}", length=False,
                   headers={"Content-Length": str(10 << 20)})
    with pytest.raises(UpstreamError, match="too large"):
        cache.get_json(upstream.base + "/liar")
    upstream.route("/unsized", {"a": 1}, length=False)
    assert cache.get_json(upstream.base + "/unsized") == {"a": 1}


def test_http_cache_keeps_no_cookies(upstream: Upstream) -> None:
    cache = HttpCache()
    url = upstream.route("/c", {"a": 1}, headers={"Set-Cookie": "session=alice; Path=/"})
    cache.get_json(url)
    cache.get_json(url)
    assert all(name.lower() != "cookie" for name, _ in upstream.last_headers("/c"))


# --------------------------------------------------------------------------- callout


def callout_cfg(url: str, allow: list[str], deny: Optional[list[str]] = None,
                **context: Any) -> AuthorizationConfig:  # fmt: skip
    return AuthorizationConfig(
        kind="callout", url=url,
        forward=ForwardConfig(headers=HeaderRules(allow=allow, deny=deny or []),
                              context=ContextRules(**context)),
    )  # fmt: skip


RESTRICTIONS = {"version": 1, "htsgetAuth": [{"location": {"id": "sample1"}}]}


def test_callout_forwards_selected_headers_and_context(upstream: Upstream) -> None:
    url = upstream.route("/authz", RESTRICTIONS)
    cfg = callout_cfg(
        url, ["Authorization", "X-Custom-*", "X-?ey", "*-Trace"], ["X-Custom-Secret*"],
        endpoint_type=True, id=True,
        extensions=[{"json_path": "$.user.custom_id"}, {"json_path": "$.tenant", "name": "Org"},
                    {"json_path": "$.missing.path"}, {"json_path": "$.list[1]"}],
    )  # fmt: skip
    callout = AuthorizationCallout(cfg)
    headers = {
        "Authorization": "Bearer tok", "X-Custom-A": "a", "x-custom-b": "b",
        "X-Custom-Secret-Thing": "s", "X-Key": "k", "X-Keys": "no", "X-Monkey": "no",
        "Cookie": "c=1",
        "Htsget-Context-Id": "forged", "Host": "evil", "My-Trace": "t",
    }  # fmt: skip
    ext = {"user": {"custom_id": "u-42"}, "tenant": "acme", "list": ["x", 7]}
    doc = callout.restrictions(headers, "reads", "sample1", ext)
    assert doc == RESTRICTIONS
    sent = upstream.last_headers("/authz")
    names = {n for n, _ in sent}
    assert {"Authorization", "X-Custom-A", "x-custom-b", "X-Key", "My-Trace"} <= names
    assert not {"X-Custom-Secret-Thing", "X-Keys", "X-Monkey", "Cookie"} & names
    got = {n.lower(): v for n, v in sent}
    assert got["authorization"] == "Bearer tok"
    assert got["host"].startswith("127.0.0.1")
    assert got["htsget-context-endpoint-type"] == "reads"
    assert got["htsget-context-id"] == "sample1"
    assert got["htsget-context-user-custom-id"] == "u-42"
    assert got["htsget-context-org"] == "acme"
    assert got["htsget-context-list-1"] == "7"
    assert "htsget-context-missing-path" not in got


def test_callout_context_off_and_nothing_allowed(upstream: Upstream) -> None:
    url = upstream.route("/authz", RESTRICTIONS)
    callout = AuthorizationCallout(callout_cfg(url, []))
    callout.restrictions({"Authorization": "Bearer tok"}, "variants", "v1")
    names = {n.lower() for n, _ in upstream.last_headers("/authz")}
    assert "authorization" not in names and not any(n.startswith("htsget-") for n in names)
    # allow everything: still no forged context, no hop-by-hop, our own Host
    everything = AuthorizationCallout(callout_cfg(url, ["*"]))
    forged = {"Htsget-Context-Id": "other", "htsget-context-endpoint-type": "reads",
              "Host": "evil", "Connection": "close, X-Drop", "TE": "trailers", "X-Ok": "1"}
    everything.restrictions(forged, "variants", "v1")
    got = {n.lower(): v for n, v in upstream.last_headers("/authz")}
    assert not any(n.startswith("htsget-") for n in got)
    assert got["x-ok"] == "1" and got["host"].startswith("127.0.0.1") and "te" not in got
    assert got.get("connection") != "close, X-Drop"


def test_callout_id_that_a_header_cannot_carry(upstream: Upstream) -> None:
    url = upstream.route("/authz", RESTRICTIONS)
    callout = AuthorizationCallout(callout_cfg(url, [], id=True))
    assert callout.forwarded_headers({}, "reads", "a/b c")["Htsget-Context-Id"] == "a/b c"
    assert callout.forwarded_headers({}, "reads", "é\n")["Htsget-Context-Id"] == "%C3%A9%0A"
    callout.restrictions({}, "reads", "é\n")


def test_header_names_from_paths() -> None:
    assert header_name_from_path("$.user.id") == "User-Id"
    assert header_name_from_path("$.user.custom_id") == "User-Custom-Id"
    assert header_name_from_path("$.requestContext.authorizer.sub") == (
        "Request-Context-Authorizer-Sub"
    )
    assert header_name_from_path("$.user.custom_id[0]") == "User-Custom-Id-0"
    with pytest.raises(ValueError, match="simple paths"):
        AuthorizationCallout(callout_cfg("http://x", [], extensions=[{"json_path": "$..a"}]))
    with pytest.raises(ValueError, match="header name"):
        AuthorizationCallout(callout_cfg("http://x", [], extensions=[{"json_path": "$"}]))


def test_callout_caching(upstream: Upstream, clock: Clock) -> None:
    url = upstream.route("/authz", RESTRICTIONS, headers={"Cache-Control": "max-age=60"})
    callout = AuthorizationCallout(callout_cfg(url, ["Authorization"], id=True),
                                   http=HttpCache(clock=clock))  # fmt: skip
    alice, bob = {"Authorization": "Bearer alice"}, {"Authorization": "Bearer bob"}
    first = callout.restrictions(alice, "reads", "s1")
    first["htsgetAuth"].clear()  # the caller's copy: the cache is unharmed
    assert callout.restrictions(alice, "reads", "s1") == RESTRICTIONS
    callout.restrictions({**alice, "X-Other": "ignored"}, "reads", "s1")
    assert upstream.count("/authz") == 1
    callout.restrictions(bob, "reads", "s1")
    assert upstream.count("/authz") == 2
    callout.restrictions(alice, "reads", "s2")
    assert upstream.count("/authz") == 3
    clock.advance(61)
    callout.restrictions(alice, "reads", "s1")
    assert upstream.count("/authz") == 4
    upstream.routes["/authz"].headers = {"Cache-Control": "no-store"}
    callout.restrictions(bob, "reads", "s9")
    callout.restrictions(bob, "reads", "s9")
    assert upstream.count("/authz") == 6


def test_callout_refusals_and_failures(upstream: Upstream) -> None:
    url = upstream.route("/authz", None)
    callout = AuthorizationCallout(callout_cfg(url, ["Authorization"]))
    headers = {"Authorization": "Bearer secret-token-value"}

    def answer(status: int, body: Any = None, raw: Optional[bytes] = None) -> None:
        upstream.routes["/authz"] = Route(body, status=status, raw=raw)

    def call() -> Any:
        return callout.restrictions(headers, "reads", "s1")

    answer(403, {"htsget": {"error": "PermissionDenied", "message": "not your cohort"}})
    refused(call, "secret-token-value", "^not your cohort$", PermissionDenied)
    answer(401, {"htsget": {"error": "InvalidAuthentication", "message": "token revoked"}})
    refused(call, "secret-token-value", "^token revoked$", InvalidAuthentication)
    answer(403, None, raw=b"nope")
    refused(call, "secret-token-value", "denied", PermissionDenied)
    answer(500, {"htsget": {"error": "InternalError", "message": "db down"}})
    err = refused(call, "secret-token-value", "HTTP 500", UpstreamError)
    assert err.status == 502  # type: ignore[attr-defined]
    answer(404, {"htsget": {"error": "NotFound", "message": "?"}})
    refused(call, "secret-token-value", "HTTP 404", UpstreamError)
    answer(200, None, raw=b"<html>ok</html>")
    refused(call, "secret-token-value", "not JSON", UpstreamError)
    answer(200, ["a", "list"])
    refused(call, "secret-token-value", "not a JSON object", UpstreamError)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/authz"
    down = AuthorizationCallout(callout_cfg(closed, ["Authorization"]))
    err = refused(lambda: down.restrictions(headers, "reads", "s1"), "secret-token-value",
                  "unreachable", UpstreamError)  # fmt: skip
    assert err.status == 503  # type: ignore[attr-defined]


def test_static_restrictions(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(RESTRICTIONS))
    static = StaticRestrictions(AuthorizationConfig(kind="static", path=str(path)))
    doc = static.restrictions({}, "", "")
    assert doc == RESTRICTIONS
    doc["htsgetAuth"].clear()
    assert static.restrictions({"Authorization": "x"}, "reads", "a") == RESTRICTIONS
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"{path}: not JSON"):
        StaticRestrictions(AuthorizationConfig(kind="static", path=str(path)))
    path.write_text("[]")
    with pytest.raises(ValueError, match=f"{path}: expected a JSON object"):
        StaticRestrictions(AuthorizationConfig(kind="static", path=str(path)))
    missing = tmp_path / "missing.json"
    with pytest.raises(ValueError, match=f"{missing}: cannot read"):
        StaticRestrictions(AuthorizationConfig(kind="static", path=str(missing)))


# --------------------------------------------------------------------------- passports

TRUSTED, PEM_ISSUER, UNTRUSTED = "https://visas.trusted", "https://visas.pem", "https://visas.evil"
VISA_KEY, PEM_VISA_KEY = EC_KEY, ED_KEY


def visa(clock: Clock, key: Any = VISA_KEY, alg: str = "ES256", iss: str = TRUSTED,
         kid: Optional[str] = "v1", **body: Any) -> str:  # fmt: skip
    content = {"type": "ControlledAccessGrants", "value": "urn:ds:1", "source": "https://dac",
               "by": "dac", "asserted": clock.now - 3600, **body}  # fmt: skip
    content = {k: v for k, v in content.items() if v is not None}
    claims = {"iss": iss, "sub": "alice", "iat": clock.now, "exp": clock.now + 3600,
              "ga4gh_visa_v1": content}  # fmt: skip
    return sign(key, claims, alg, kid=kid)


@pytest.fixture
def verifier(upstream: Upstream, clock: Clock, tmp_path: Path) -> PassportVerifier:
    jwks_url = upstream.route("/visa-jwks", {"keys": [jwk(VISA_KEY, "v1"), jwk(RSA_OTHER, "v2")]},
                              headers={"Cache-Control": "max-age=300"})  # fmt: skip
    pem_path = tmp_path / "visa.pem"
    pem_path.write_bytes(pem(PEM_VISA_KEY))
    cfg = PassportConfig(
        trusted_issuers=[VisaIssuerConfig(iss=TRUSTED, jwks=jwks_url),
                         VisaIssuerConfig(iss=PEM_ISSUER, path=str(pem_path))],
        datasets={"urn:ds:1": DatasetGrantConfig(id="sample1"),
                  "urn:ds:2": DatasetGrantConfig(prefix="cohort2/"),
                  "urn:ds:3": DatasetGrantConfig(regex=r"x\d+")},
    )  # fmt: skip
    return PassportVerifier(cfg, ["ES256", "EdDSA"], 30.0, clock=clock)


def test_passport_valid_visas_open_their_datasets(
    verifier: PassportVerifier, clock: Clock, upstream: Upstream
) -> None:
    passport = [visa(clock), visa(clock, value="urn:ds:1"),
                visa(clock, PEM_VISA_KEY, "EdDSA", PEM_ISSUER, kid=None, value="urn:ds:2"),
                visa(clock, value="urn:ds:3")]  # fmt: skip
    rules = verifier.grants({"ga4gh_passport_v1": passport}, "token")
    assert rules == [{"location": {"id": "sample1"}}, {"location": {"prefix": "cohort2/"}},
                     {"location": {"regex": r"x\d+"}}]  # fmt: skip
    assert upstream.count("/visa-jwks") == 1


VISA = {"type": "ControlledAccessGrants", "value": "urn:ds:1"}


@pytest.mark.parametrize("make, reason", [
    pytest.param(lambda c: visa(c, RSA_OTHER, "RS256", UNTRUSTED), "untrusted issuer",
                 id="untrusted issuer"),
    pytest.param(lambda c: visa(c, ED_KEY, "EdDSA", kid="v1"), "key type",
                 id="trusted name, other key type"),
    pytest.param(lambda c: visa(c, RSA_OTHER, "RS256", kid="v2"), "algorithm 'RS256'",
                 id="algorithm not allowed"),
    pytest.param(lambda c: visa(c, ec.generate_private_key(ec.SECP256R1())), "bad signature",
                 id="trusted name, other key"),
    pytest.param(lambda c: visa(c, type="AffiliationAndRole"), "not a ControlledAccessGrants",
                 id="wrong type"),
    pytest.param(lambda c: visa(c, value="urn:ds:unknown"), "not a configured dataset",
                 id="unknown value"),
    pytest.param(lambda c: visa(c, conditions=[[{"type": "AffiliationAndRole",
                                                 "value": "const:faculty@x"}]]),
                 "conditions", id="conditions"),
    pytest.param(lambda c: visa(c, asserted=c.now + 3600), "asserted in the future",
                 id="asserted in the future"),
    pytest.param(lambda c: visa(c, asserted=None), "no valid asserted", id="no asserted"),
    pytest.param(lambda c: visa(c, asserted="yesterday"), "no valid asserted",
                 id="bad asserted"),
    pytest.param(lambda c: sign(VISA_KEY, {"iss": TRUSTED, "exp": c.now - 3600,
                                           "ga4gh_visa_v1": {**VISA, "asserted": c.now - 7200}},
                                "ES256", kid="v1"), "expired", id="expired"),
    pytest.param(lambda c: hs256(pem(PEM_VISA_KEY), {
        "iss": PEM_ISSUER, "exp": c.now + 60, "ga4gh_visa_v1": {**VISA, "asserted": c.now}},
        kid=None), "algorithm 'HS256' is not allowed", id="HS256 with the PEM"),
    pytest.param(lambda c: unsigned({
        "iss": TRUSTED, "exp": c.now + 60, "ga4gh_visa_v1": {**VISA, "asserted": c.now}}),
        "algorithm 'none' is not allowed", id="alg none"),
    pytest.param(lambda c: "not.a.jwt", "malformed", id="garbage"),
    pytest.param(lambda c: 42, "not a JWT string", id="not a string"),
    pytest.param(lambda c: sign(VISA_KEY, {"iss": TRUSTED, "exp": c.now + 60}, "ES256",
                                kid="v1"), "no ga4gh_visa_v1", id="no visa object"),
])  # fmt: skip
def test_passport_bad_visas_open_nothing(
    verifier: PassportVerifier, clock: Clock, make: Callable[[Clock], Any], reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    bad = make(clock)
    with caplog.at_level(logging.DEBUG, logger="htsgetr.auth.passport"):
        assert verifier.grants({"ga4gh_passport_v1": [bad]}, "token") == []
    skips = [r.getMessage() for r in caplog.records if "visa skipped" in r.getMessage()]
    assert len(skips) == 1 and reason in skips[0], skips
    if isinstance(bad, str):
        assert all(part not in skips[0] for part in bad.split(".") if len(part) >= 8)
    # and it does not spoil a good one next to it
    good = visa(clock)
    assert verifier.grants({"ga4gh_passport_v1": [bad, good]}, "token") == [
        {"location": {"id": "sample1"}}
    ]


def test_passport_visa_times(verifier: PassportVerifier, clock: Clock) -> None:
    token = visa(clock)
    clock.advance(3600 + 29)  # within leeway
    assert verifier.grants({"ga4gh_passport_v1": [token]}, "t") == [{"location": {"id": "sample1"}}]
    clock.advance(2)
    assert verifier.grants({"ga4gh_passport_v1": [token]}, "t") == []


def test_passport_not_there(verifier: PassportVerifier, caplog: pytest.LogCaptureFixture) -> None:
    assert verifier.grants({}, "t") == []
    with caplog.at_level(logging.DEBUG, logger="htsgetr.auth.passport"):
        assert verifier.grants({"ga4gh_passport_v1": "oops"}, "t") == []
    assert [r.getMessage() for r in caplog.records] == [
        "passport skipped: ga4gh_passport_v1 is not a list"
    ]


def test_passport_issuer_keys_unavailable_skip_the_visa(
    verifier: PassportVerifier, clock: Clock, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.routes["/visa-jwks"] = Route({"error": "x"}, status=503)
    with caplog.at_level(logging.WARNING, logger="htsgetr.auth.passport"):
        assert verifier.grants({"ga4gh_passport_v1": [visa(clock)]}, "t") == []
    assert "issuer's keys are unavailable" in caplog.text


def test_passport_from_userinfo(upstream: Upstream, clock: Clock, tmp_path: Path) -> None:
    good = visa(clock)
    expected = "Bearer access-token-value"

    def userinfo_check(headers: dict[str, str]) -> Optional[tuple[int, Any]]:
        if headers.get("Authorization") != expected:
            return 401, {"error": "invalid_token"}
        return None

    userinfo = upstream.route("/userinfo", {"sub": "alice", "ga4gh_passport_v1": [good]},
                              check=userinfo_check)  # fmt: skip
    jwks_url = upstream.route("/visa-jwks", {"keys": [jwk(VISA_KEY, "v1")]})
    cfg = PassportConfig(trusted_issuers=[VisaIssuerConfig(iss=TRUSTED, jwks=jwks_url)],
                         datasets={"urn:ds:1": DatasetGrantConfig(id="sample1")},
                         userinfo_url=userinfo)  # fmt: skip
    verifier = PassportVerifier(cfg, ["ES256"], 0.0, clock=clock)
    assert verifier.grants({"sub": "alice"}, "access-token-value") == [
        {"location": {"id": "sample1"}}
    ]
    assert upstream.count("/userinfo") == 1
    # a passport in the token itself wins: userinfo is not asked
    assert verifier.grants({"ga4gh_passport_v1": []}, "access-token-value") == []
    assert upstream.count("/userinfo") == 1
    refused(lambda: verifier.grants({}, "other-token-value"), "other-token-value",
            "refused the token", InvalidAuthentication)  # fmt: skip
    upstream.routes["/userinfo"] = Route({"error": "x"}, status=500)
    refused(lambda: verifier.grants({}, "access-token-value"), "access-token-value",
            "HTTP 500", UpstreamError)  # fmt: skip
    upstream.routes["/userinfo"] = Route(None, raw=b"eyJhbGciOi.jwt.body")
    refused(lambda: verifier.grants({}, "access-token-value"), "access-token-value",
            "not JSON", UpstreamError)  # fmt: skip


def test_passport_bad_pem_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    cfg = PassportConfig(trusted_issuers=[VisaIssuerConfig(iss=TRUSTED, path=str(missing))])
    with pytest.raises(ValueError, match=f"{missing}: cannot read"):
        PassportVerifier(cfg, ["ES256"], 0.0)
