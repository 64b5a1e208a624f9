"""Bearer tokens: who is asking. Signature, algorithm allow-list, key type and time checks.

`verify_jwt` is the one place a JWS is verified (access tokens here, Passport visas in
`auth.passport`). The algorithm is checked against an asymmetric-only allow-list BEFORE any
key is looked up, and the key must be of the algorithm's type, so neither `alg: none` nor an
HMAC signed with a public key can pass. Keys never come from the token (`jku`, `jwk`, `x5u`
are ignored): only from the configured PEM or JWKS URL.

Refusals are `InvalidAuthentication` with a short reason; no message ever holds the token.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Protocol, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from ..protocol import InvalidAuthentication, UpstreamError
from .http_cache import Answer, HttpCache, safe_url
from .schema import ASYMMETRIC_ALGORITHMS, AuthConfig

with warnings.catch_warnings():
    # authlib >= 1.7 points to joserfc; authlib.jose keeps working through 1.x
    import authlib.deprecate  # noqa: F401 - it installs its "always" filter on import

    warnings.simplefilter("ignore", DeprecationWarning)
    from authlib.jose import ECKey, JsonWebKey, JsonWebSignature, OKPKey, RSAKey
    from authlib.jose.errors import BadSignatureError, JoseError

#: longer tokens are refused unparsed (authlib's own bound)
MAX_TOKEN_LENGTH = 256_000

#: the key family each algorithm needs
_FAMILIES = {
    **{f"{p}{n}": ("RSA",) for p in ("RS", "PS") for n in (256, 384, 512)},
    "ES256": ("EC:P-256",), "ES384": ("EC:P-384",), "ES512": ("EC:P-521",),
    "EdDSA": ("OKP:Ed25519", "OKP:Ed448"),
}  # fmt: skip
#: names safe to repeat in a message (anything else in `alg` is the caller's text)
_KNOWN_ALGS = frozenset(_FAMILIES) | {"none", "HS256", "HS384", "HS512", "ES256K"}
_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"\s*(\S+)[ \t]+([A-Za-z0-9._~+/-]+=*)\s*")


def bearer_token(header: Optional[str]) -> str:
    """The token of an `Authorization: Bearer <token>` header (RFC 6750), else 401."""
    if not header or not header.strip():
        raise InvalidAuthentication("missing bearer token")
    match = _BEARER.fullmatch(header)
    if match is None:
        raise InvalidAuthentication("malformed Authorization header")
    if match.group(1).lower() != "bearer":
        raise InvalidAuthentication("the Authorization scheme is not Bearer")
    return match.group(2)


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class VerifyKey:
    """A public key ready for verification; `alg` pins it to one algorithm when the JWK says."""

    kid: Optional[str]
    family: str  # RSA | EC:P-256 | EC:P-384 | EC:P-521 | OKP:Ed25519 | OKP:Ed448
    jwk: Any  # the authlib key object
    alg: Optional[str] = None


def _family(public_key: Any) -> Optional[str]:
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curve = _CURVES.get(public_key.curve.name)
        return f"EC:{curve}" if curve else None
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "OKP:Ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "OKP:Ed448"
    return None


def public_key(key: Any, kid: Optional[str] = None, alg: Optional[str] = None) -> VerifyKey:
    """Wrap a `cryptography` public key (RSA, EC P-256/384/521, Ed25519/Ed448)."""
    family = _family(key)
    if family is None:
        raise ValueError(f"unsupported key type {type(key).__name__}")
    cls = {"RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}[family.split(":")[0]]
    return VerifyKey(kid, family, cls.import_key(key), alg)


def load_public_key_file(path: str) -> VerifyKey:
    """The PEM public key (or certificate) at `path`; ValueError naming the path otherwise."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        raise ValueError(f"{path}: cannot read the public key file ({err.strerror})") from None
    if b"PRIVATE KEY-----" in data:
        raise ValueError(f"{path}: holds a private key; give the public key (or certificate)")
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
        return public_key(key)
    except (ValueError, TypeError):
        raise ValueError(
            f"{path}: not a PEM public key or certificate (RSA, EC P-256/384/521 or Ed25519)"
        ) from None


def parse_jwks(doc: Any, where: str) -> list[VerifyKey]:
    """The signing keys of a JWKS document; keys we cannot use (oct, enc, odd curves) are
    skipped, a document without a `keys` list is an UpstreamError."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise UpstreamError(f"{where}: not a JWKS (no 'keys' list)")
    out = []
    for entry in doc["keys"]:
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        ops = entry.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            continue
        kid, alg = entry.get("kid"), entry.get("alg")
        if (kid is not None and not isinstance(kid, str)) or (
            alg is not None and alg not in _FAMILIES
        ):
            continue
        try:
            out.append(public_key(JsonWebKey.import_key(entry).get_public_key(), kid, alg))
        except Exception:  # noqa: BLE001 - a broken entry must not hide the good ones
            continue
    return out


class KeySource(Protocol):
    def keys_for(self, kid: Optional[str]) -> Sequence[VerifyKey]:
        """Candidate keys for a token's `kid` (all keys when it has none)."""
        ...


class StaticKeys:
    """Fixed keys (a PEM file): a token's `kid` is not needed to find them."""

    def __init__(self, keys: Sequence[VerifyKey]) -> None:
        self.keys = list(keys)

    def keys_for(self, kid: Optional[str]) -> Sequence[VerifyKey]:
        return self.keys


class JwksKeys:
    """Keys from a JWKS URL, cached as its answer allows. A `kid` missing from the current set
    makes one fresh fetch, unless the set was fetched less than `refetch_interval` seconds ago:
    a stream of tokens with made-up `kid`s costs the identity provider at most one request per
    interval per worker."""

    def __init__(
        self,
        url: str,
        http: HttpCache,
        *,
        refetch_interval: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.refetch_interval = refetch_interval
        self._http = http
        self._clock = clock
        self._lock = threading.Lock()
        self._answer: Optional[Answer] = None
        self._keys: list[VerifyKey] = []
        self._last_fetch = -math.inf

    def keys_for(self, kid: Optional[str]) -> Sequence[VerifyKey]:
        keys = self._parse(self._http.fetch(self.url))
        if kid is None:
            return keys
        found = [k for k in keys if k.kid == kid]
        if found or not self._may_refetch():
            return found
        return [k for k in self._parse(self._http.fetch(self.url, refresh=True)) if k.kid == kid]

    def _may_refetch(self) -> bool:
        now = self._clock()
        with self._lock:
            if now - self._last_fetch < self.refetch_interval:
                return False
            self._last_fetch = now  # claim the slot before fetching: one fetch, not N
            return True

    def _parse(self, answer: Answer) -> list[VerifyKey]:
        with self._lock:
            if answer is self._answer:
                return self._keys
        keys = parse_jwks(answer.data, f"JWKS {safe_url(self.url)}")
        with self._lock:
            if self._answer is None or answer.fetched_at >= self._answer.fetched_at:
                self._answer, self._keys = answer, keys
            self._last_fetch = max(self._last_fetch, answer.fetched_at)
        return keys


# --------------------------------------------------------------------------- verification


def _b64json(segment: str) -> Any:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        return json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None


def unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and payload of a compact JWS WITHOUT verification (to pick keys); else 401."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or not _JWS.fullmatch(token):
        raise InvalidAuthentication("malformed token")
    head, body, _ = token.split(".")
    header, payload = _b64json(head), _b64json(body)
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise InvalidAuthentication("malformed token")
    return header, payload


def _number(claims: dict[str, Any], name: str) -> Optional[float]:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidAuthentication(f"malformed {name} claim")
    return float(value)


def verify_jwt(
    token: str,
    keys: KeySource,
    algorithms: Iterable[str],
    *,
    leeway: float = 0.0,
    now: Optional[float] = None,
) -> dict[str, Any]:
    """The claims of a compact JWS signed by one of `keys` with an allowed algorithm, whose
    `exp` (required) and `nbf` hold at `now` give or take `leeway` seconds; else 401."""
    header, _ = unverified_parts(token)
    alg = header.get("alg")
    allowed = set(algorithms) & set(ASYMMETRIC_ALGORITHMS)  # never none / HS*, whatever is asked
    if not isinstance(alg, str) or alg not in allowed:
        shown = f" {alg!r}" if isinstance(alg, str) and alg in _KNOWN_ALGS else ""
        raise InvalidAuthentication(f"token algorithm{shown} is not allowed")
    if "crit" in header:
        raise InvalidAuthentication("token has critical header parameters")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise InvalidAuthentication("malformed token")
    candidates = keys.keys_for(kid)
    if not candidates:
        raise InvalidAuthentication("unknown key id" if kid is not None else "no key for token")
    usable = [k for k in candidates if k.family in _FAMILIES[alg] and k.alg in (None, alg)]
    if not usable:
        raise InvalidAuthentication("the key type does not match the token algorithm")
    jws = JsonWebSignature(algorithms=[alg])
    for key in usable:
        try:
            payload = jws.deserialize_compact(token, key.jwk)["payload"]
            break
        except BadSignatureError:
            continue
        except (JoseError, ValueError, TypeError):
            raise InvalidAuthentication("malformed token") from None
    else:
        raise InvalidAuthentication("bad signature")
    try:
        claims = json.loads(payload)
    except ValueError:
        claims = None
    if not isinstance(claims, dict):
        raise InvalidAuthentication("malformed token")
    now = time.time() if now is None else now
    exp, nbf = _number(claims, "exp"), _number(claims, "nbf")
    if exp is None:
        raise InvalidAuthentication("token has no exp claim")
    if now >= exp + leeway:
        raise InvalidAuthentication("token expired")
    if nbf is not None and now + leeway < nbf:
        raise InvalidAuthentication("token not yet valid")
    return claims


class TokenValidator:
    """Validates access tokens against `[auth]`: keys, algorithms, time, iss, aud, sub."""

    def __init__(
        self,
        auth: AuthConfig,
        *,
        http: Optional[HttpCache] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if auth.jwt is None:
            raise ValueError("auth.jwt is not configured")
        self.auth = auth
        self._clock = clock
        jwt = auth.jwt
        self.keys: KeySource
        if jwt.kind == "public_key":
            if not jwt.path:
                raise ValueError("auth.jwt.path: required by kind = 'public_key'")
            self.keys = StaticKeys([load_public_key_file(jwt.path)])
        else:
            if not jwt.url:
                raise ValueError("auth.jwt.url: required by kind = 'jwks'")
            http = http if http is not None else HttpCache(jwt.http, clock=clock)
            self.keys = JwksKeys(jwt.url, http, refetch_interval=jwt.refetch_interval,
                                 clock=clock)  # fmt: skip

    def validate(self, token: str) -> dict[str, Any]:
        """The token's claims, or InvalidAuthentication (UpstreamError when the JWKS is down)."""
        auth = self.auth
        claims = verify_jwt(token, self.keys, auth.algorithms, leeway=auth.leeway,
                            now=self._clock())  # fmt: skip
        if auth.validate_issuer is not None and claims.get("iss") not in auth.validate_issuer:
            raise InvalidAuthentication("token issuer not accepted")
        if auth.validate_audience is not None:
            aud = claims.get("aud")
            auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if not any(isinstance(a, str) and a in auth.validate_audience for a in auds):
                raise InvalidAuthentication("token audience not accepted")
        if auth.validate_subject is not None and claims.get("sub") != auth.validate_subject:
            raise InvalidAuthentication("token subject not accepted")
        return claims
