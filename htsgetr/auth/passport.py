"""GA4GH Passports (AAI 1.2, Passport 1.2): ControlledAccessGrants visas open datasets.

The passport is the `ga4gh_passport_v1` claim (a list of visa JWTs) of the already validated
access token, or of the userinfo answer for that token. A visa counts only when a trusted
issuer signed it (keys from the configuration, never from the visa's `jku`), with an allowed
algorithm, it is in its validity window, its `ga4gh_visa_v1` is a ControlledAccessGrants whose
`value` we map to IDs, it was not asserted in the future, and it carries no `conditions` (we
do not evaluate them, so such a visa opens nothing). Each such visa becomes an htsget-rs
restriction rule opening the whole of its IDs.

A bad visa is skipped, never an error: a passport routinely carries visas meant for other
services. Skips are logged at debug level with the reason, never the visa.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any, Callable, Iterable, Mapping, Optional

from ..protocol import InvalidAuthentication, UpstreamError
from .http_cache import HttpCache, HttpStatusError, safe_url
from .jwt import JwksKeys, KeySource, StaticKeys, load_public_key_file, unverified_parts, verify_jwt
from .schema import DatasetGrantConfig, PassportConfig

log = logging.getLogger(__name__)

PASSPORT_CLAIM = "ga4gh_passport_v1"
VISA_CLAIM = "ga4gh_visa_v1"
GRANT_TYPE = "ControlledAccessGrants"


def grant_rule(grant: DatasetGrantConfig) -> dict[str, Any]:
    """The htsget-rs rule opening every ID the grant names (no `rules`: the whole of them)."""
    for kind in ("id", "prefix", "regex"):
        value = getattr(grant, kind)
        if value is not None:
            return {"location": {kind: value}}
    raise ValueError("a dataset grant needs one of id, prefix, regex")


class PassportVerifier:
    """Turns a caller's passport into the restriction rules its valid visas grant."""

    def __init__(
        self,
        cfg: PassportConfig,
        algorithms: Iterable[str],
        leeway: float,
        *,
        http: Optional[HttpCache] = None,
        clock: Callable[[], float] = time.time,
        refetch_interval: float = 30.0,
    ) -> None:
        self.cfg = cfg
        self.algorithms = list(algorithms)
        self.leeway = leeway
        self._clock = clock
        self._http = http if http is not None else HttpCache(cfg.http, clock=clock)
        self._issuers: dict[str, KeySource] = {}
        for issuer in cfg.trusted_issuers:
            if issuer.jwks:
                self._issuers[issuer.iss] = JwksKeys(
                    issuer.jwks, self._http, refetch_interval=refetch_interval, clock=clock
                )
            elif issuer.path:
                self._issuers[issuer.iss] = StaticKeys([load_public_key_file(issuer.path)])
            else:
                raise ValueError(f"passports: issuer {issuer.iss!r} needs jwks or path")
        self._rules = {value: grant_rule(grant) for value, grant in cfg.datasets.items()}

    def grants(self, claims: Mapping[str, Any], token: str) -> list[dict[str, Any]]:
        """Rules from the valid visas (none: []). UpstreamError only when userinfo fails."""
        passport = claims.get(PASSPORT_CLAIM)
        if passport is None and self.cfg.userinfo_url:
            passport = self._userinfo(self.cfg.userinfo_url, token).get(PASSPORT_CLAIM)
        if not isinstance(passport, list):
            if passport is not None:
                log.debug("passport skipped: %s is not a list", PASSPORT_CLAIM)
            return []
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for visa in passport:
            rule = self.visa_rule(visa)
            if rule is not None:
                key = json.dumps(rule, sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    out.append(rule)
        return out

    def visa_rule(self, visa: Any) -> Optional[dict[str, Any]]:
        """The rule one visa grants, or None (with the reason logged at debug level)."""
        try:
            return self._visa_rule(visa)
        except InvalidAuthentication as err:
            log.debug("visa skipped: %s", err.message)
        except UpstreamError as err:
            log.warning("visa skipped: its issuer's keys are unavailable (%s)", err.message)
        except Exception as err:  # noqa: BLE001 - one odd visa must not lock the caller out
            log.warning("visa skipped: unexpected %s", type(err).__name__)
        return None

    def _visa_rule(self, visa: Any) -> dict[str, Any]:
        if not isinstance(visa, str):
            raise InvalidAuthentication("not a JWT string")
        _, unverified = unverified_parts(visa)
        iss = unverified.get("iss")
        keys = self._issuers.get(iss) if isinstance(iss, str) else None
        if keys is None:
            raise InvalidAuthentication("untrusted issuer")
        now = self._clock()
        claims = verify_jwt(visa, keys, self.algorithms, leeway=self.leeway, now=now)
        if claims.get("iss") != iss:
            raise InvalidAuthentication("untrusted issuer")
        body = claims.get(VISA_CLAIM)
        if not isinstance(body, dict):
            raise InvalidAuthentication(f"no {VISA_CLAIM} object")
        if body.get("type") != GRANT_TYPE:
            raise InvalidAuthentication(f"not a {GRANT_TYPE} visa")
        if "conditions" in body:
            raise InvalidAuthentication("visa has conditions (not evaluated)")
        asserted = body.get("asserted")
        if (
            isinstance(asserted, bool)
            or not isinstance(asserted, (int, float))
            or not math.isfinite(asserted)
        ):
            raise InvalidAuthentication("visa has no valid asserted time")
        if asserted > now + self.leeway:
            raise InvalidAuthentication("visa asserted in the future")
        value = body.get("value")
        rule = self._rules.get(value) if isinstance(value, str) else None
        if rule is None:
            raise InvalidAuthentication("visa value is not a configured dataset")
        return {"location": dict(rule["location"])}

    def _userinfo(self, url: str, token: str) -> dict[str, Any]:
        try:
            doc = self._http.fetch(url, {"Authorization": f"Bearer {token}"}).data
        except HttpStatusError as err:
            if err.upstream_status == 401:
                raise InvalidAuthentication("the userinfo endpoint refused the token") from None
            raise
        if not isinstance(doc, dict):
            raise UpstreamError(f"GET {safe_url(url)}: the answer is not a JSON object")
        return doc
