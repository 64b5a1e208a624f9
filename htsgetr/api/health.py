"""GET /healthz and GET /readyz: public (no token, no Host check), cheap, JSON, 200 or 503.

- `/healthz`: the process answers HTTP (a liveness probe: a worker stuck past gunicorn's
  `timeout` is restarted by gunicorn itself; a dead master answers nothing).
- `/readyz`: the configuration is loaded (this app exists) and its locations are usable:
  a local location's root is a readable directory (one stat; a root missing under
  `allow_missing = true` is reported but does not make the server unready); with `[health]
  probe_storage = true` every location's storage is asked too (S3: the bucket), the answer
  kept `probe_interval` seconds. The body names each location's state, never a path or an
  error text (they are logged).

They are Flask routes of no blueprint, so the auth gate (api/auth.py), the Host check of the
ticket views and api/fast.py leave them alone.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Optional

from flask import Blueprint, Response, current_app

from ..config import Config

bp = Blueprint("health", __name__)
log = logging.getLogger("htsgetr")

HEALTHZ, READYZ = "/healthz", "/readyz"
_JSON = "application/json"


def _answer(body: dict[str, Any], status: int) -> Response:
    resp = Response(json.dumps(body), status=status, content_type=_JSON)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.route(HEALTHZ, methods=["GET", "HEAD"])
def healthz() -> Response:
    return _answer({"status": "ok"}, 200)


class Readiness:
    """The readiness of one app's engine, with storage probes kept `probe_interval` s."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.config: Config = engine.config
        self._probed: dict[int, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def check(self) -> tuple[bool, dict[str, Any]]:
        health = self.config.health
        locations = []
        ready = True
        for i, (_, location, storage) in enumerate(self.engine.resolver.rules):
            state = self._state(i, location, storage, health.probe_storage,
                                health.probe_interval)
            entry: dict[str, Any] = {"location": location.name or i,
                                     "backend": location.backend, "status": state}
            locations.append(entry)
            if state not in ("ok", "unchecked") and not (
                    state == "missing" and self.config.allow_missing):
                ready = False
        body = {"status": "ready" if ready else "not ready", "config": "loaded",
                "locations": locations}
        return ready, body

    def _state(self, i: int, location: Any, storage: Any, probe: bool, interval: float) -> str:
        if location.backend != "file" and not probe:
            return "unchecked"
        now = time.monotonic()
        if location.backend != "file":  # a remote probe: one per interval
            with self._lock:
                kept = self._probed.get(i)
                if kept is not None and kept[0] > now:
                    return kept[1]
        check = getattr(storage, "check", None)
        state = "ok"
        try:
            if check is not None:
                check()
        except ValueError as err:
            state = "missing" if location.backend == "file" else "unavailable"
            _warn(i, location, err)
        except Exception as err:  # an upstream fault: not ready, say so once per interval
            state = "unavailable"
            _warn(i, location, err)
        if location.backend != "file":
            with self._lock:
                self._probed[i] = (now + interval, state)
        return state


_warned: dict[tuple[int, Optional[str]], float] = {}


def _warn(i: int, location: Any, err: Exception) -> None:
    key = (i, location.name)
    now = time.monotonic()
    if _warned.get(key, 0.0) > now:
        return
    _warned[key] = now + 60.0
    log.warning("readyz: locations[%d] (%s) is not usable: %s", i, location.backend, err)


#: app.extensions key of the app's `Readiness`
READINESS = "htsgetr.readiness"


@bp.record_once
def _setup(state: Any) -> None:
    state.app.extensions[READINESS] = Readiness(state.app.extensions["htsgetr"])


@bp.route(READYZ, methods=["GET", "HEAD"])
def readyz() -> Response:
    ready, body = current_app.extensions[READINESS].check()
    return _answer(body, 200 if ready else 503)
