"""GET tickets and /data byte ranges without Flask's per-request machinery, byte for byte
as Flask answers them.

A ticket under load costs little in the engine (a cached index, a few block reads); what
Flask does around it — a request context, URL adapter and routing, the before/after hooks
(auth, Host, CORS, Cache-Control), a `Response` object — cost several times a bare Flask
view (bench/run.py: load with random regions); a /data range of a local file likewise
costs more around the sendfile(2) than in it. `FastTickets` sits in front of the Flask app
as WSGI middleware (`app.wsgi_app`), answers the common requests itself with the same
functions the Flask views call (`Site.origin`, `parse_get`, `Htsget.ticket`, `ticket_json`,
`UrlSigner.verify`, `Resolver.data_object`, `data.local_answer`, `error_response`), and
hands everything else to Flask unchanged:

- anything but GET /reads|variants|sequences/<id> and GET/HEAD /data/<path> of a local
  file, with an ordinary ASCII path and query (derived blocks, proxied backends and
  paths that name nothing — the 404 — are Flask's);
- a CORS request (an `Origin` header): flask-cors answers it;
- a ticket server with its own auth gate (tokens, restrictions), a data server that wants
  a token (signed urls are checked here);
- an app whose hooks, routes or request signals are not exactly the ones this module
  knows: whatever is added later (metrics, another hook, a route under /reads) turns the
  shortcut off rather than being bypassed. Checked when the app serves its first request,
  which Flask itself serves (after it, Flask refuses new hooks);
- errors other than htsget's own (a bug): Flask answers them (and logs them).

The headers the app's after-request hooks add to a ticket or /data response without an
`Origin` (CORS, Cache-Control) do not depend on the request: they are taken once from the
hooks themselves. tests/test_fast_path.py compares both paths' status, headers and body.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Optional

from flask import Flask, Response, signals
from werkzeug.http import HTTP_STATUS_CODES

from ..crypt4gh import Encryption
from ..observability.keys import QUERY, TICKET
from ..protocol import CONTENT_TYPE, Endpoint, HtsgetError, parse_get
from ..storage.local import LocalStorage
from . import auth, data, tickets
from .errors import error_response

log = logging.getLogger("htsgetr")

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

ENDPOINTS = {e.value: e for e in Endpoint}
#: request signals that, connected, need Flask's own dispatch (someone listens)
_SIGNALS = (signals.request_started, signals.request_finished, signals.got_request_exception,
            signals.request_tearing_down, signals.appcontext_pushed, signals.appcontext_popped,
            signals.appcontext_tearing_down)
_STATUS_200 = "200 OK"
_STATUS = {code: f"{code} {HTTP_STATUS_CODES[code].upper()}" for code in (200, 206, 416)}
#: derived blocks (formats/derived.py) are the Flask view's own
_is_derived: Optional[Callable[[str], bool]] = getattr(data, "is_derived", None)


class FastTickets:
    """WSGI middleware for `app.wsgi_app` (see the module docstring)."""

    def __init__(self, app: Flask, flask_wsgi: WsgiApp) -> None:
        self.app = app
        self.flask = flask_wsgi
        self.enabled: Optional[bool] = None  # decided at the first request
        self.tickets_on = self.data_on = False
        self.hook_headers: list[tuple[str, str]] = []
        self.data_hook_headers: list[tuple[str, str]] = []
        self._extensions: tuple[Any, dict[Any, Any]] = (None, {})
        self.parse_qsl: Any = None
        self.served = 0  # answered here (tests, curiosity)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if not self.enabled:
            if self.enabled is None:  # Flask serves the first request, then no hook is added
                try:
                    return self.flask(environ, start_response)
                finally:
                    self.enabled = self._check()
            return self.flask(environ, start_response)
        method = environ["REQUEST_METHOD"]
        if method not in ("GET", "HEAD") or "HTTP_ORIGIN" in environ:
            return self.flask(environ, start_response)
        path: str = environ.get("PATH_INFO", "")
        cut = path.find("/", 1)
        head = path[1:cut] if cut > 0 else ""
        id = path[cut + 1:]
        query_string: str = environ.get("QUERY_STRING", "")
        if (not id or id[-1] == "/" or "//" in id or not path.isascii()
                or not path.isprintable() or not query_string.isascii()
                or "HTTP_ACCESS_CONTROL_REQUEST_PRIVATE_NETWORK" in environ
                or any(s.receivers for s in _SIGNALS)):
            return self.flask(environ, start_response)
        if head == "data" and self.data_on:
            return self._data(method, id, query_string, environ, start_response)
        endpoint = ENDPOINTS.get(head)
        if endpoint is None or method != "GET" or id == "service-info" or not self.tickets_on:
            return self.flask(environ, start_response)
        extensions = self.app.extensions
        if extensions[auth.EXTENSION].ticket is not None:
            return self.flask(environ, start_response)
        args = self._args(query_string)
        site: tickets.Site = extensions[tickets.SITE]
        try:
            origin = site.origin(environ)  # tickets._check_host
            query = environ[QUERY] = parse_get(endpoint, id, args)  # for the access line
            ticket = environ[TICKET] = extensions["htsgetr"].ticket(
                query, Encryption.of_get(args, environ))
            body = tickets.ticket_json(ticket, site, origin, extensions[auth.EXTENSION].signer)
        except HtsgetError as err:
            if err.status >= 500:  # logged, as Flask's handler logs it
                log.error("%s: %s", err.error, err.message)
            self.served += 1
            return self._send(error_response(err), environ, start_response)
        except Exception:  # a bug: Flask answers it the way it answers every other
            return self.flask(environ, start_response)
        payload = body.encode()
        self.served += 1
        start_response(_STATUS_200, [("Content-Type", CONTENT_TYPE),
                                     ("Content-Length", str(len(payload))), *self.hook_headers])
        return [payload]

    def _data(self, method: str, path: str, query_string: str, environ: dict[str, Any],
              start_response: StartResponse) -> Iterable[bytes]:
        """GET/HEAD /data/<path> of a local file (the Flask view: `data.data`)."""
        extensions = self.app.extensions
        access = extensions[auth.EXTENSION]
        if access.data is not None or (_is_derived is not None and _is_derived(path)):
            return self.flask(environ, start_response)
        engine = extensions["htsgetr"]
        cached, formats = self._extensions
        if cached is not engine:
            formats = {fmt: handler.extensions for fmt, handler in engine.handlers.items()}
            self._extensions = (engine, formats)
        range_header = environ.get("HTTP_RANGE")
        try:
            if access.signer is not None:  # auth._before
                access.signer.verify(method, path, range_header, self._args(query_string))
            found = engine.resolver.data_object(path, formats)
            if found is None or not isinstance(found[0], LocalStorage):
                return self.flask(environ, start_response)  # 404, derived, proxied: Flask's
            status, headers, body = data.local_answer(
                found[0], found[1], method, range_header, environ, extensions.get(data.ACCEL))
        except HtsgetError as err:
            if err.status >= 500:
                log.error("%s: %s", err.error, err.message)
            self.served += 1
            return self._send(error_response(err), environ, start_response,
                              self.data_hook_headers)
        except Exception:
            return self.flask(environ, start_response)
        self.served += 1
        start_response(_STATUS[status], [*headers, *self.data_hook_headers])
        return body

    def _args(self, query_string: str) -> dict[str, str]:
        """`request.args` as the views read it: `.get` gives the first value."""
        args: dict[str, str] = {}
        if "%" in query_string or "+" in query_string:  # something to decode: parse_qsl
            pairs: Iterable[Any] = self.parse_qsl(query_string, keep_blank_values=True,
                                                  errors="werkzeug.url_quote")
        else:  # plain `a=1&b=2` (ASCII, checked before): split as parse_qsl would
            pairs = (part.partition("=")[::2] for part in query_string.split("&") if part)
        for key, value in pairs:
            args.setdefault(key, value)
        return args

    def _send(self, resp: Response, environ: dict[str, Any], start_response: StartResponse,
              hook_headers: Optional[list[tuple[str, str]]] = None) -> Iterable[bytes]:
        for name, value in self.hook_headers if hook_headers is None else hook_headers:
            resp.headers[name] = value
        return resp(environ, start_response)

    # ------------------------------------------------------------------ the guard

    def _check(self) -> bool:
        """True when the app is exactly what this shortcut stands in for."""
        from urllib.parse import parse_qsl

        import flask_cors.extension

        app = self.app
        if app.config.get("SERVER_NAME") or app.config.get("TRUSTED_HOSTS") \
                or app.url_map.merge_slashes:
            return False
        for rule in app.url_map.iter_rules():
            head = rule.rule.split("/", 2)[1]
            if head in ENDPOINTS and (rule.rule, rule.endpoint) not in {
                (f"/{head}/<path:id>", f"tickets.{head}_ticket"),
                (f"/{head}/service-info", f"service_info.{head}"),
            } or head == "data" and (rule.rule, rule.endpoint) != ("/data/<path:path>",
                                                                   "data.data"):
                return False
        before = {k: v for k, v in app.before_request_funcs.items() if v}
        allowed_before: dict[Any, list[Any]] = {}
        if "tickets" in app.blueprints:
            allowed_before["tickets"] = [tickets._check_host]
        if before.get(None):
            allowed_before[None] = [auth._before]
        if before != allowed_before:
            return False
        after = [f for f in app.after_request_funcs.get(None, []) if not (
            f is tickets._no_store or f is data._no_store
            or (getattr(f, "__module__", "") == flask_cors.extension.__name__
                and getattr(f, "__name__", "") == "cors_after_request"))]
        if after or any(v for k, v in app.after_request_funcs.items() if k is not None):
            return False
        if any(v for v in app.url_value_preprocessors.values()) or any(
                v for v in app.teardown_request_funcs.values()):
            return False
        self.parse_qsl = parse_qsl
        if "tickets" in app.blueprints:
            found = self._hook_headers("/reads/x")
            self.tickets_on = found is not None
            self.hook_headers = found or []
        if "data" in app.blueprints:
            found = self._hook_headers("/data/x")
            self.data_on = found is not None
            self.data_hook_headers = found or []
        return self.tickets_on or self.data_on

    def _hook_headers(self, path: str) -> Optional[list[tuple[str, str]]]:
        """The headers the after-request hooks add to an answer of `path` without an Origin
        (None: they do more than add headers)."""
        with self.app.test_request_context(path, method="GET"):
            resp = Response("{}", content_type=CONTENT_TYPE)
            before = list(resp.headers.items())
            resp = self.app.process_response(resp)
            after = list(resp.headers.items())
        if after[: len(before)] != before or resp.status_code != 200:
            return None
        return after[len(before):]


def install(app: Flask) -> None:
    """Put `FastTickets` in front of the app's Flask dispatch (tickets, /data or both)."""
    app.wsgi_app = FastTickets(app, app.wsgi_app)  # type: ignore[method-assign]
