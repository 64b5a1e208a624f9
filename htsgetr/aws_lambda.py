"""AWS Lambda entry points: `ticket_handler` (/reads, /variants, /sequences, service-info)
and `data_handler` (/data), the same Flask app as `htsgetr serve` behind apig-wsgi.

Events: API Gateway REST (payload 1.0), HTTP API (2.0) and Lambda function URLs (2.0).
Stage prefixes are stripped before routing (`/Prod/reads/x` routes as `/reads/x`) and kept
in the ticket urls, so /data urls point where the client can reach them: the configured
`ticket_server.base_url` (HTSGET_BASE_URL) when set, else `https://<the API's domain
name><stage or base path>` from the event's requestContext (set by API Gateway, never the
client's Host header). Binary responses (/data) leave base64-encoded.

Configuration: HTSGET_CONFIG (a TOML file; relative to the function's code directory),
else HTSGET_CONFIG_TOML (the file's text), else `htsgetr.toml` when the zip bundles one;
and the HTSGET_* variables, as for the server. S3 locations hand out presigned urls (their
default mode), so clients read the bucket directly and /data only serves proxied, derived
or local blocks. The configuration is read and the app built once per container (the cold
start) and reused by every invocation; a configuration that does not load answers 500
(logged) and is tried again on the next invocation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import tempfile
from typing import Any, Callable, Optional

from .config import ENV_CONFIG, ENV_DATA_DIR, ENV_STORAGE, Config, ConfigError, load_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger("htsgetr")

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]

#: the bundled configuration file looked for in the code directory when HTSGET_CONFIG is unset
BUNDLED_CONFIG = "htsgetr.toml"
#: the configuration's text in a variable (Terraform writes it; Lambda allows 4 KB in all)
ENV_CONFIG_TOML = "HTSGET_CONFIG_TOML"
#: a synchronous Lambda response holds at most 6 MB (base64 text for binary bodies)
MAX_RESPONSE_BYTES = 6 * 1024 * 1024 - 4096
#: content types that stay text (apig-wsgi base64-encodes everything else)
TEXT_TYPES = ("text/", "application/json", "application/vnd.ga4gh.", "application/problem+json")
#: apps per distinct public base url (one in practice: a function sits behind one API)
MAX_APPS = 8


def task_root() -> str:
    """The function's code directory (/var/task on Lambda)."""
    return os.environ.get("LAMBDA_TASK_ROOT") or os.getcwd()


def config_path(env: dict[str, str]) -> Optional[str]:
    """HTSGET_CONFIG (relative paths against the code directory), else HTSGET_CONFIG_TOML
    (the file's text, e.g. written by Terraform; saved under /tmp, so paths in it must be
    absolute), else the bundled file."""
    path = env.get(ENV_CONFIG)
    if path:
        return path if os.path.isabs(path) else os.path.join(task_root(), path)
    text = env.get(ENV_CONFIG_TOML)
    if text:
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        path = os.path.join(tempfile.gettempdir(), f"htsgetr-{digest}.toml")
        if not os.path.isfile(path):
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".toml")
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        return path
    bundled = os.path.join(task_root(), BUNDLED_CONFIG)
    return bundled if os.path.isfile(bundled) else None


def _names_locations(path: Optional[str], env: dict[str, str]) -> bool:
    if env.get(ENV_STORAGE, "").strip() or env.get(ENV_DATA_DIR):
        return True
    if path is None:
        return False
    try:
        with open(path, "rb") as f:
            return bool(tomllib.load(f).get("locations"))
    except (OSError, tomllib.TOMLDecodeError):
        return True  # load_config reports the file's problem itself


def load_lambda_config(env: Optional[dict[str, str]] = None) -> Config:
    """The function's configuration. Unlike the server, no location means an error, not
    "files under the current directory" (that would be the function's own code)."""
    env = dict(os.environ if env is None else env)
    path = config_path(env)
    if path is not None:
        env[ENV_CONFIG] = path
    if not _names_locations(path, env):
        raise ConfigError(
            "no [[locations]]: set HTSGET_STORAGE (e.g. s3://bucket/prefix) or give a"
            f" configuration ({BUNDLED_CONFIG} beside the code, HTSGET_CONFIG or"
            f" {ENV_CONFIG_TOML})",
            "locations", path or "environment",
        )
    config = load_config(env=env)
    from .auth.gate import missing_secret

    missing = missing_secret(config, env)
    if missing:
        raise ConfigError(missing, "auth.data_urls.secret", path or "environment")
    return config


# --------------------------------------------------------------------------- events


def event_version(event: dict[str, Any]) -> str:
    """"1.0" (REST API), "2.0" (HTTP API, function URL) or "alb"."""
    ctx = event.get("requestContext")
    if isinstance(ctx, dict) and "elb" in ctx:
        return "alb"
    return str(event.get("version", "1.0"))


def _merge_multi(single: Optional[dict[str, Any]], multi: Optional[dict[str, Any]],
                 fold: bool) -> dict[str, list[str]]:
    """multiValue* completed by the single-value map: API Gateway sends both, but console
    test events and hand-written ones often fill only one (or disagree: multi wins)."""
    out: dict[str, list[str]] = {k: list(v) for k, v in (multi or {}).items() if v is not None}
    seen = {k.lower() if fold else k for k in out}
    for key, value in (single or {}).items():
        if value is not None and (key.lower() if fold else key) not in seen:
            out[key] = [value]
    return out


def _strip(path: str, prefix: str) -> Optional[str]:
    if prefix and (path == prefix or path.startswith(prefix + "/")):
        return path[len(prefix):] or "/"
    return None


def normalize(event: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The event with its stage prefix stripped from the path, and the public base url
    (`https://domain/stage`) its ticket urls should start with."""
    event = dict(event)
    ctx = event.get("requestContext") or {}
    version = event_version(event)
    stage = ctx.get("stage") or ""
    prefix = ""
    if version == "2.0":
        raw = event.get("rawPath") or "/"
        stripped = _strip(raw, "/" + stage) if stage and stage != "$default" else None
        if stripped is not None:
            event["rawPath"], prefix = stripped, "/" + stage
        headers = event.get("headers") or {}
        event["headers"] = headers
        event.setdefault("rawQueryString", "")
    else:
        event["multiValueHeaders"] = _merge_multi(
            event.get("headers"), event.get("multiValueHeaders"), fold=True)
        event["multiValueQueryStringParameters"] = _merge_multi(
            event.get("queryStringParameters"), event.get("multiValueQueryStringParameters"),
            fold=False)
        path = event.get("path") or "/"
        public = str(ctx.get("path") or "").split("?", 1)[0]
        if stage and _strip(path, "/" + stage) is not None:  # a base path mapping
            event["path"], prefix = _strip(path, "/" + stage), "/" + stage
        elif public != path and public.endswith(path) and path != "/":
            prefix = public[: -len(path)]  # what API Gateway took off: the stage
        elif stage and ".execute-api." in str(ctx.get("domainName", "")):
            prefix = "/" + stage
        headers = {k.lower(): v[-1] for k, v in event["multiValueHeaders"].items() if v}
    domain = ctx.get("domainName") or _host(headers)
    return event, f"https://{domain}{prefix.rstrip('/')}"


def _host(headers: dict[str, Any]) -> str:
    for key, value in headers.items():
        if key.lower() == "host" and value:
            return str(value).split(",")[-1].strip()
    return "localhost"


# --------------------------------------------------------------------------- handlers


class LambdaApp:
    """The apps of one role in this container, built on first use and reused."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.config: Optional[Config] = None
        self.handlers: dict[str, Handler] = {}
        self.builds = 0  # apps built so far (the tests check it stays at one)

    def handler_for(self, base: str) -> Handler:
        if self.config is None:
            self.config = load_lambda_config()
        config = self.config
        if self.role == "data" or config.ticket_server.base_url or config.data_server.separate:
            base = ""  # the configuration decides the urls (or there are none to build)
        handler = self.handlers.get(base)
        if handler is None:
            if len(self.handlers) >= MAX_APPS:
                self.handlers.clear()
            handler = self.handlers[base] = self._build(config, base)
        return handler

    def _build(self, config: Config, base: str) -> Handler:
        from apig_wsgi import make_lambda_handler

        from .app import create_app
        from .observability.logs import configure

        configure(config.logging)  # [logging] format and level (Lambda keeps its handler)
        if base:
            server = dataclasses.replace(config.ticket_server, base_url=base)
            config = dataclasses.replace(config, ticket_server=server)
        self.builds += 1
        return make_lambda_handler(create_app(config, self.role), binary_support=True,
                                   non_binary_content_type_prefixes=TEXT_TYPES)

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        event, base = normalize(event)
        try:
            handler = self.handler_for(base)
        except (ConfigError, ValueError, OSError) as err:  # storages are built here too
            log.error("configuration error: %s", err)
            return _error(event, 500, "InternalError", "the server's configuration does not load")
        response = handler(event, context)
        if len(response.get("body") or "") > MAX_RESPONSE_BYTES:
            return _error(event, 500, "InternalError",
                          "the response is larger than a Lambda function may return (6 MB):"
                          " serve this location with presigned S3 urls or from a server")
        return response


def _error(event: dict[str, Any], status: int, error: str, message: str) -> dict[str, Any]:
    from .protocol import CONTENT_TYPE

    body = json.dumps({"htsget": {"error": error, "message": message}})
    headers = {"Content-Type": CONTENT_TYPE}
    out: dict[str, Any] = {"statusCode": status, "body": body, "isBase64Encoded": False}
    if event_version(event) in ("1.0", "alb") and "multiValueHeaders" in event:
        out["multiValueHeaders"] = {k: [v] for k, v in headers.items()}
    else:
        out["headers"] = headers
    return out


_ticket = LambdaApp("ticket")
_data = LambdaApp("data")


def ticket_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda handler of the ticket function (/reads, /variants, /sequences, service-info)."""
    return _ticket(event, context)


def data_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda handler of the data function (/data: proxied, derived and local blocks)."""
    return _data(event, context)


def reset() -> None:
    """Forget the built apps and configuration (a new container, as far as tests can tell)."""
    for app in (_ticket, _data):
        app.config, app.handlers, app.builds = None, {}, 0
