"""htsgetr's configuration: the schema (dataclasses and checks) and its layers, TOML
(tomllib / tomli) + HTSGET_* environment + CLI.

The dataclasses are the single source of truth: the TOML schema (keys and types, from the
type hints), validation, the environment variable names and the commented default file
(`htsgetr config default`, from each field's `doc`) are all derived from them. Turning TOML
and environment values into them is the generic job of `typed_config`; location shorthand
(storage URLs, id_prefix) is rewritten by `location_sugar`.

Precedence: command line > HTSGET_* environment > file (HTSGET_CONFIG or --config) > defaults.
Every error is a `ConfigError` naming the source (file, variable) and the key.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional
from urllib.parse import urlsplit

from .auth.schema import AuthConfig
from .cors import CorsConfig
from .crypt4gh.keys import Crypt4ghConfig, LocationKeys
from .hosts import check_allowed_hosts, parse_networks
from .location_sugar import _location_list, expand_location
from .location_sugar import parse_storage as parse_storage  # re-exported
from .observability.schema import HealthConfig, LoggingConfig, MetricsConfig, TracingConfig
from .protocol import ENDPOINT_FORMATS, Endpoint, Format
from .typed_config import (
    ConfigError,
    _convert,
    _Ctx,
    _join,
    _opt,
    _plain,
    build,
    hints,
    set_key,
)
from .typed_config import fields_of as fields_of  # re-exported
from .typed_config import to_dict as to_dict  # re-exported
from .viewer.settings import ViewerConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "HTSGET_"
log = logging.getLogger("htsgetr.config")


# --------------------------------------------------------------------------- field checks

FORMATS = tuple(f.value for f in Format)
BACKENDS = ("file", "s3", "url")
MODES = ("redirect", "proxy", "presigned")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]*$")


def _check_formats(value: Optional[list[str]], key: str, ctx: _Ctx) -> Optional[list[str]]:
    if value is None:
        return None
    out = []
    for i, fmt in enumerate(value):
        if fmt.upper() not in FORMATS:
            raise ctx.error(f"{key}[{i}]", f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
        out.append(fmt.upper())
    return out


def _check_url(value: Optional[str], key: str, ctx: _Ctx) -> Optional[str]:
    if value is not None and urlsplit(value).scheme not in ("http", "https"):
        raise ctx.error(key, f"expected an http(s):// URL, got {value!r}")
    return value


def _check_accel_prefix(value: str, key: str, ctx: _Ctx) -> str:
    if not (value.startswith("/") and value.endswith("/")) or any(
            c in value for c in "?#% \t\r\n"):
        raise ctx.error(key, f"{value!r}: a URI path that starts and ends with '/'")
    return value


def _check_allowed_hosts(value: Optional[list[str]], key: str, ctx: _Ctx) -> Optional[list[str]]:
    if value is None:
        return None
    try:
        return check_allowed_hosts(value)
    except ValueError as err:
        raise ctx.error(key, f"{err} (name, name:port, name:*, *.domain, [v6]:port or *)") \
            from None


def _check_trusted_proxies(value: list[str], key: str, ctx: _Ctx) -> list[str]:
    try:
        parse_networks(value)
    except ValueError as err:
        raise ctx.error(key, f"expected addresses or CIDR networks: {err}") from None
    return value


def _check_reference_dirs(value: list[str], key: str, ctx: _Ctx) -> list[str]:
    """Absolute directories (relative to the file), usable in htslib's REF_PATH."""
    out = []
    for i, path in enumerate(value):
        if not path or ":" in path or "%" in path:
            raise ctx.error(f"{key}[{i}]", f"{path!r}: a directory path without ':' or '%'")
        if ctx.base_dir and not os.path.isabs(path):
            path = os.path.join(ctx.base_dir, os.path.expanduser(path))
        out.append(os.path.normpath(os.path.abspath(path)))
    return out


SERVICE_INFO_STRINGS = (
    "id", "name", "description", "contactUrl", "documentationUrl", "environment", "version",
    "createdAt", "updatedAt",
)  # fmt: skip
_SI_KNOWN = {*SERVICE_INFO_STRINGS, "organization", *(e.value for e in Endpoint)}


def _norm(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


def _check_service_info(info: dict[str, Any], key: str, ctx: _Ctx) -> dict[str, Any]:
    """Known GA4GH fields typed, per-endpoint tables checked, custom fields kept as they are."""
    out: dict[str, Any] = {}
    for name, value in info.items():
        sub = f"{key}.{name}"
        if name in ("type", "htsget"):
            raise ctx.error(sub, "is derived by the server and cannot be configured")
        if name not in _SI_KNOWN:
            near = [k for k in _SI_KNOWN if _norm(k) == _norm(name)]
            if near:
                raise ctx.error(sub, f"unknown key (did you mean {near[0]!r}?)")
            out[name] = _plain(value)  # a custom field
        elif name in ("createdAt", "updatedAt") and isinstance(
            value, (datetime.date, datetime.datetime)
        ):
            out[name] = _plain(value)
        elif name in SERVICE_INFO_STRINGS:
            out[name] = _convert(str, value, sub, ctx)
        elif name == "organization":
            org = _convert(dict[str, str], value, sub, ctx)
            for k in org:
                if k not in ("name", "url"):
                    raise ctx.error(f"{sub}.{k}", "unknown key (organization has name and url)")
            out[name] = org
        else:  # reads / variants / sequences
            table = _convert(dict[str, Any], value, sub, ctx)
            allowed = [f.value for f in ENDPOINT_FORMATS[Endpoint(name)]]
            for k in table:
                if k != "formats":
                    raise ctx.error(f"{sub}.{k}", "unknown key (an endpoint table has formats)")
            fmts = _convert(list[str], table.get("formats", []), f"{sub}.formats", ctx)
            for i, fmt in enumerate(fmts):
                if fmt.upper() not in allowed:
                    raise ctx.error(
                        f"{sub}.formats[{i}]",
                        f"{fmt!r} is not a {name} format (one of {', '.join(allowed)})",
                    )
            out[name] = {"formats": [f.upper() for f in fmts]} if "formats" in table else {}
    return out


# --------------------------------------------------------------------------- the schema


@dataclass
class ServerConfig:
    """One HTTP bind (the ticket server, or a separate data server)."""

    host: str = _opt("127.0.0.1", "address to bind: 0.0.0.0 (or ::) for every interface")
    port: int = _opt(8080, "TCP port", min=0, max=65535)
    base_url: Optional[str] = _opt(
        None,
        "public URL clients reach this server at; default: the Host each client used",
        check=_check_url,
    )
    workers: int = _opt(2, "gunicorn worker processes", min=1)
    threads: int = _opt(4, "gthread: threads per worker", min=1)
    timeout: int = _opt(60, "seconds a silent worker gets before it is restarted", min=1)
    graceful_timeout: int = _opt(30, "seconds in-flight requests get on reload or stop", min=0)
    worker_class: str = _opt(
        "gevent",
        "gevent: a greenlet per connection, so slow or idle clients cost memory, not "
        "workers (README: Slow clients) | gthread: `threads` per worker | sync",
        choices=("gevent", "gthread", "sync"),
    )
    worker_connections: int = _opt(
        10000, "gevent: connections one worker holds at once (~20 KB each while idle)", min=1
    )
    header_timeout: float = _opt(
        10.0, "seconds a new connection gets to send its request line and headers", min=0.1
    )
    body_timeout: float = _opt(
        30.0, "seconds a request body gets to arrive in full (else 408, connection closed)",
        min=0.1,
    )
    send_timeout: float = _opt(
        60.0, "seconds a response may stall (the client reads nothing) before it is cut", min=0.1
    )
    keepalive: int = _opt(
        5,
        "seconds a kept-alive connection may wait for its next request (gevent: and its headers)",
        min=1,
    )
    tls_cert: Optional[str] = _opt(None, "PEM certificate (chain): serve HTTPS", path=True)
    tls_key: Optional[str] = _opt(None, "PEM private key of tls_cert", path=True)
    cors_origins: list[str] = _opt(
        doc='origins allowed to call cross-origin ("*": any); cors.allow_origins wins',
        factory=lambda: ["*"],
    )
    cors: CorsConfig = _opt(doc="CORS, htsget-rs keys", factory=CorsConfig)
    auth: Optional[AuthConfig] = _opt(None, "this server's own [auth], instead of the global")
    allowed_hosts: Optional[list[str]] = _opt(
        None,
        "Host headers ticket urls may name when base_url is unset (else 400): name, name:port,"
        " name:*, *.domain, * (any); default: the bind address, localhost, 127.0.0.1, ::1 and"
        " this machine's names, on the bind's port",
        check=_check_allowed_hosts,
    )
    trusted_proxies: list[str] = _opt(
        doc="peer addresses / CIDR networks whose Forwarded and X-Forwarded-Host/-Proto/-Port"
        " headers are believed (default: nobody's)",
        factory=list,
        check=_check_trusted_proxies,
    )

    def url(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        scheme = "https" if self.tls_cert else "http"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"


#: `[data_server] accel`: nginx checks signed /data urls itself (api/accel.py); urls are then
#: always signed (auth/gate.py)
NGINX_DIRECT = "nginx-direct"
#: what checks signed urls inside nginx with accel = nginx-direct (api/accel.py)
NGINX_VERIFIERS = ("njs", "perl", "module")


@dataclass
class DataServerConfig(ServerConfig):
    """The /data endpoint. Unless `separate`, it is served by the ticket server's bind."""

    separate: bool = _opt(False, "serve /data on its own bind (below) instead of the ticket one")
    port: int = _opt(8081, "TCP port", min=0, max=65535)
    accel: str = _opt(
        "off",
        "a front proxy sends local files: nginx (X-Accel-Redirect to accel_prefix) | apache"
        " (X-Sendfile, absolute path) | off; htsgetr still checks path, signature and Range |"
        " nginx-direct (nginx checks the signature itself: urls always signed; see"
        " `htsgetr config nginx`)",
        choices=("off", "nginx", NGINX_DIRECT, "apache"),
    )
    accel_prefix: str = _opt(
        "/_protected/",
        "nginx: the internal location (per location root: `htsgetr.api.accel.nginx_locations`)",
        check=_check_accel_prefix,
    )


@dataclass
class LocationConfig:
    """One ordered ID-resolution rule: `regex` over the ID -> `substitution` -> backend key."""

    name: Optional[str] = _opt(None, "optional name; also the /data/~<name>/ path of its urls")
    regex: str = _opt("(.*)", "matched against the whole ID (Python re syntax)")
    substitution: str = _opt("$1", "the storage key stem: $1 / ${name} capture groups, $$ = $")
    backend: str = _opt("file", "file | s3 | url", choices=BACKENDS)
    root: Optional[str] = _opt(None, "file: the directory keys live under", path=True)
    bucket: Optional[str] = _opt(None, "s3: bucket (may use capture groups)")
    prefix: str = _opt("", "key prefix inside the store (s3; file: a subdirectory of root)")
    region: Optional[str] = _opt(
        None, "s3: region (default: the AWS configuration; presigning: the bucket's own)"
    )
    endpoint_url: Optional[str] = _opt(
        None, "s3: endpoint (MinIO, Ceph, R2, ...)", check=_check_url
    )
    public_endpoint_url: Optional[str] = _opt(
        None, "s3: endpoint clients reach, when not endpoint_url (presigned urls)", check=_check_url
    )
    path_style: bool = _opt(False, "s3: path-style addressing")
    profile: Optional[str] = _opt(None, "s3: AWS profile (default: the standard chain)")
    expires: int = _opt(3600, "s3: presigned URL lifetime, seconds", min=1)
    url: Optional[str] = _opt(
        None, "url: base URL the key is appended to (or fills {key} in)", check=_check_url
    )
    index_url: Optional[str] = _opt(
        None, "url: base URL of the index files, if elsewhere", check=_check_url
    )
    mode: str = _opt("redirect", "url: redirect | proxy; s3: presigned | proxy", choices=MODES)
    timeout: float = _opt(10.0, "url/s3: seconds per upstream request", min=0.001)
    retries: int = _opt(2, "url/s3: retries of a failed upstream request", min=0)
    headers: dict[str, str] = _opt(doc="url: headers sent upstream", factory=dict, secret=True)
    forward_headers: list[str] = _opt(doc="url: client headers forwarded upstream", factory=list)
    forward_authorization: bool = _opt(False, "url: forward the client's bearer token upstream")
    cache_ttl: float = _opt(0.0, "url/s3: seconds object metadata is trusted unchecked", min=0)
    formats: Optional[list[str]] = _opt(
        None, "formats served from here (default: all)", check=_check_formats
    )
    fall_through: bool = _opt(False, "when the object is missing here, try the next match")
    keys: Optional[LocationKeys] = _opt(
        None, "Crypt4GH: objects are <name>.c4gh, encrypted for keys.server (htsget-rs keys:"
        " server.private, server.public, client.public; README: Crypt4GH)")
    allow_plaintext: bool = _opt(
        True, "Crypt4GH: serve decrypted data (mode 2) to requests without"
        " encryptionScheme=C4GH; false: they get 400")

    @classmethod
    def _prepare(cls, table: dict[str, Any], key: str, ctx: _Ctx) -> dict[str, Any]:
        """`storage`, `id_prefix` and htsget-rs spellings as plain keys (`build` calls it)."""
        return expand_location(table, key, ctx)

    def _validate(self, key: str, ctx: _Ctx) -> None:
        """Self-contained checks, run when built (`build` calls it)."""
        _check_location(self, key, ctx)


@dataclass
class Config:
    ticket_server: ServerConfig = _opt(doc="the htsget endpoints", factory=ServerConfig)
    data_server: DataServerConfig = _opt(doc="the /data endpoint", factory=DataServerConfig)
    locations: list[LocationConfig] = _opt(doc="ordered ID -> storage rules", factory=list)
    service_info: dict[str, Any] = _opt(
        doc="GA4GH service-info fields", factory=dict, check=_check_service_info
    )
    max_post_bytes: int = _opt(1 << 20, "largest accepted POST body, bytes", min=1)
    max_regions: int = _opt(
        1024, "most regions one ticket request may list (POST): more is a 413", min=1
    )
    max_index_bytes: int = _opt(
        1 << 30, "largest index (BAI/CSI/TBI/CRAI) once inflated, bytes: more is a 500", min=1
    )
    max_header_bytes: int = _opt(
        64 << 20, "largest data-file header once inflated, bytes: more is a 500", min=1
    )
    cache_entries: int = _opt(256, "parsed indexes/headers kept per worker", min=0)
    cache_bytes: int = _opt(512 << 20, "memory those may hold per worker, bytes", min=0)
    block_cache_bytes: int = _opt(
        64 << 20, "inflated BGZF blocks and re-cut block edges kept per worker, bytes", min=0
    )
    md5_max_bytes: int = _opt(
        1 << 30, "whole-file md5 is computed for local files up to this", min=0
    )
    max_inline_bytes: int = _opt(
        256 << 10,
        "ticket JSON size, characters, that inline data: urls may fill: CRAM re-cuts and"
        " BGZF edge blocks that would take a ticket past it are served through /data"
        " instead (derived blocks)",
        min=0,
    )
    cram_reference_path: list[str] = _opt(
        doc="directories holding the references of reference-based CRAMs (a FASTA the @SQ UR"
        " names, or M5-named sequences, htslib's REF_CACHE layout); default: none",
        factory=list,
        check=_check_reference_dirs,
    )
    cram_max_recut_bytes: int = _opt(
        256 << 20,
        "largest CRAM container a region's re-cut reads into memory, bytes (htslib writes"
        " containers of a few MB): a larger one is sent whole, or refused (403) when an"
        " authorization rule restricts the query",
        min=1,
    )
    cram_reproducible: bool = _opt(
        True,
        "re-encode each re-cut CRAM container with a writer of its own, so a region's ticket"
        " is the same bytes from every worker and every time; false: each worker keeps its"
        " CRAM writers open, ~7 ms less a container, bytes that vary with what a writer"
        " encoded before (the records are exactly htslib's either way)",
    )
    allow_missing: bool = _opt(
        False, "start (and reload) even when a location's root directory does not exist"
    )
    watch: bool = _opt(False, "poll the config file and reload when it changes")
    watch_interval: float = _opt(2.0, "seconds between polls of the config file", min=0.05)
    auth: Optional[AuthConfig] = _opt(None, "bearer tokens, restrictions, signed /data urls")
    crypt4gh: Crypt4ghConfig = _opt(doc="Crypt4GH (locations with keys)",
                                    factory=Crypt4ghConfig)
    viewer: ViewerConfig = _opt(doc="GET /viewer/<id>: igv.js on this server (off by default)",
                                factory=ViewerConfig)
    logging: LoggingConfig = _opt(doc="log lines and the access line", factory=LoggingConfig)
    metrics: MetricsConfig = _opt(doc="Prometheus metrics", factory=MetricsConfig)
    tracing: TracingConfig = _opt(doc="OpenTelemetry traces", factory=TracingConfig)
    health: HealthConfig = _opt(doc="GET /healthz and /readyz", factory=HealthConfig)

    @classmethod
    def _prepare(cls, table: dict[str, Any], key: str, ctx: _Ctx) -> dict[str, Any]:
        """`locations` may be URLs (`build` and `set_key` call it)."""
        if "locations" in table:
            table = {**table, "locations": _location_list(table["locations"])}
        return table

    def auth_for(self, role: str) -> Optional[AuthConfig]:
        """The [auth] a server uses: its own table, else the global one."""
        server = self.data_server if role == "data" else self.ticket_server
        return server.auth if server.auth is not None else self.auth

    def auth_tables(self) -> list[AuthConfig]:
        """Every [auth] table set: global, ticket server's, data server's (in that order)."""
        tables = (self.auth, self.ticket_server.auth, self.data_server.auth)
        return [a for a in tables if a is not None]

    def data_url(self) -> str:
        """Base URL of the /data endpoint that local and proxied ticket urls point at."""
        if self.data_server.separate:
            return self.data_server.url()
        return self.ticket_server.url()


def for_data_dir(data_dir: str, **server: Any) -> Config:
    """The simplest configuration: every ID is a path under one directory."""
    return Config(
        ticket_server=ServerConfig(**server),
        locations=[LocationConfig(root=data_dir)],
    )


# --------------------------------------------------------------------------- whole-object checks


def _check_server(server: ServerConfig, key: str, ctx: _Ctx) -> None:
    if bool(server.tls_cert) != bool(server.tls_key):
        missing = "tls_key" if server.tls_cert else "tls_cert"
        raise ctx.error(_join(key, missing), "tls_cert and tls_key go together")


def _check_location(loc: LocationConfig, key: str, ctx: _Ctx) -> None:
    from .storage.resolver import template_groups

    try:
        regex = re.compile(loc.regex)
    except re.error as err:
        raise ctx.error(
            _join(key, "regex"), f"bad regular expression {loc.regex!r}: {err}"
        ) from None
    have = [str(i) for i in range(regex.groups + 1)] + list(regex.groupindex)
    for name in ("substitution", "bucket"):
        for group in template_groups(getattr(loc, name) or ""):
            if group not in have:
                listed = ", ".join(have[1:]) or "none"
                raise ctx.error(
                    _join(key, name),
                    f"names group {group!r}, which the regex {loc.regex!r} lacks"
                    f" (groups: {listed})",
                )
    if loc.backend == "url" and loc.mode == "presigned":
        raise ctx.error(_join(key, "mode"), "a url location is 'redirect' or 'proxy'")
    required = {"file": "root", "s3": "bucket", "url": "url"}[loc.backend]
    if not getattr(loc, required):
        raise ctx.error(_join(key, required), f"required by backend {loc.backend!r}")
    if loc.name is not None and not _NAME.match(loc.name):
        raise ctx.error(
            _join(key, "name"),
            f"{loc.name!r}: start with a letter; then letters, digits, '.', '_', '-'",
        )


def _check_config(config: Config, key: str, ctx: _Ctx) -> None:
    names: dict[str, int] = {}
    for i, loc in enumerate(config.locations):
        if loc.name is not None:
            if loc.name in names:
                raise ctx.error(
                    f"locations[{i}].name", f"{loc.name!r} repeats locations[{names[loc.name]}]"
                )
            names[loc.name] = i
    t, d = config.ticket_server, config.data_server
    if d.separate and d.port == t.port and d.port != 0 and d.host == t.host:
        raise ctx.error(
            "data_server.port", f"the separate data server needs its own bind ({d.port})"
        )
    if d.accel == NGINX_DIRECT and d.auth is not None and d.auth.jwt is not None:
        raise ctx.error("data_server.accel", "nginx-direct: nginx checks url signatures, not"
                        " the tokens [data_server.auth] asks for; use accel = \"nginx\"")


CHECKS: dict[type, Callable[[Any, str, _Ctx], None]] = {
    ServerConfig: _check_server,
    DataServerConfig: _check_server,
    LocationConfig: _check_location,
    Config: _check_config,
}


def _no_check(obj: Any, key: str, ctx: _Ctx) -> None:
    """A type without whole-object checks."""


def check_tree(obj: Any, key: str, ctx: _Ctx) -> None:
    """Re-run every whole-object check (after overrides changed single keys)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_tree(value, _join(key, f.name), ctx)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    check_tree(item, f"{_join(key, f.name)}[{i}]", ctx)
    CHECKS.get(type(obj), _no_check)(obj, key, ctx)


# --------------------------------------------------------------------------- layers


def read_file(path: str) -> Config:
    """The configuration a TOML file describes (over the defaults)."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as err:
        raise ConfigError(f"cannot read the file: {err.strerror or err}", source=path) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"invalid TOML: {err}", source=path) from None
    ctx = _Ctx(source=path, base_dir=os.path.dirname(os.path.abspath(path)))
    config: Config = build(Config, doc, "", ctx)
    return config


def load_doc(doc: Mapping[str, Any], source: str = "configuration") -> Config:
    """A configuration from a dict shaped like the TOML file (no file, no environment):
    `Htsget.from_config({...})`. Relative paths are relative to the working directory."""
    ctx = _Ctx(source=source, base_dir=os.getcwd())
    config: Config = build(Config, dict(doc), "", ctx)
    if not config.locations:
        config.locations = [LocationConfig(root=".")]
    check_tree(config, "", ctx)
    return config


def leaf_keys(cls: type = Config, key: str = "") -> Iterator[str]:
    """Every dotted key that has an environment variable (all but the [[locations]] tables)."""
    for f in dataclasses.fields(cls):
        tp = hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            yield from leaf_keys(tp, _join(key, f.name))  # type: ignore[arg-type]
        elif f.name != "locations":
            yield _join(key, f.name)


def env_name(dotted: str) -> str:
    return ENV_PREFIX + dotted.replace(".", "_").upper()


#: short names kept from the first releases (HTSGET_PORT etc. mean the ticket server)
ENV_ALIASES = {
    "HTSGET_HOST": "ticket_server.host",
    "HTSGET_PORT": "ticket_server.port",
    "HTSGET_BASE_URL": "ticket_server.base_url",
    "HTSGET_WORKERS": "ticket_server.workers",
}
#: locations sugar: a directory, and whitespace-separated [ID_PREFIX=]URL storage specs
ENV_DATA_DIR, ENV_STORAGE, ENV_CONFIG = "HTSGET_DATA_DIR", "HTSGET_STORAGE", "HTSGET_CONFIG"


def env_vars() -> dict[str, str]:
    """HTSGET_* variable -> dotted key, aliases included."""
    return {**ENV_ALIASES, **{env_name(k): k for k in leaf_keys()}}


#: HTSGET_* variables read by other parts than the configuration schema
OTHER_ENV = {
    ENV_CONFIG, ENV_DATA_DIR, ENV_STORAGE,
    "HTSGET_DATA_URL_SECRET",  # auth/signing.py: the /data url signing secret
    "HTSGET_ROLE",  # wsgi.py: all | ticket | data
    "HTSGET_CONFIG_TOML",  # aws_lambda.py: the configuration's text
}


def unknown_env(env: Mapping[str, str]) -> list[str]:
    """One message per HTSGET_* variable that nothing reads (a typo would otherwise be
    silently ignored), with the nearest known name."""
    known = set(env_vars()) | OTHER_ENV
    out = []
    for var in sorted(v for v in env if v.startswith(ENV_PREFIX) and v not in known):
        near = difflib.get_close_matches(var, sorted(known), n=1, cutoff=0.75)
        hint = f" (did you mean {near[0]}?)" if near else ""
        out.append(f"{var} is not an htsgetr variable{hint}; ignored")
    return out


def storage_locations(specs: list[str], ctx: _Ctx, data_dir: Optional[str] = None) -> list[Any]:
    """`--data-dir` / `--storage` (or their variables) as location tables."""
    tables: list[Any] = [{"backend": "file", "root": data_dir}] if data_dir else []
    return tables + [{"storage": s} for s in specs]


def _sugar_locations(tables: list[Any], ctx: _Ctx, first: int) -> list[LocationConfig]:
    return [build(LocationConfig, t, f"locations[{first + i}]", ctx)
            for i, t in enumerate(tables)]


def apply_env(config: Config, env: dict[str, str]) -> list[str]:
    """HTSGET_* overrides; returns the variables used. HTSGET_DATA_DIR / HTSGET_STORAGE
    locations are added after the file's (see `load_config`), not here."""
    used = []
    for var, dotted in env_vars().items():
        if var in env:
            set_key(config, dotted, env[var], _Ctx(source=var, from_str=True))
            used.append(var)
    return used + [v for v in (ENV_DATA_DIR, ENV_STORAGE) if env.get(v)]


def apply_cli(config: Config, cli: dict[str, Any]) -> list[str]:
    """Command-line values by dotted key; `data_dir` / `storage` (a list) are locations sugar,
    added by `load_config`. Returns "command line" if anything was set."""
    ctx = _Ctx(source="command line")
    used = False
    for dotted, value in cli.items():
        if dotted not in ("data_dir", "storage") and value is not None:
            set_key(config, dotted, value, ctx)
            used = True
    specs, data_dir = cli.get("storage") or [], cli.get("data_dir")
    return ["command line"] if used or specs or data_dir else []


def _added_locations(
    config: Config, env: dict[str, str], cli: dict[str, Any]
) -> list[LocationConfig]:
    """The locations `--data-dir` / `--storage` name (else HTSGET_DATA_DIR / HTSGET_STORAGE:
    the command line replaces the variables' ones), numbered after the file's."""
    specs, data_dir = cli.get("storage") or [], cli.get("data_dir")
    if specs or data_dir:
        ctx = _Ctx(source="command line")
    else:
        specs, data_dir = env.get(ENV_STORAGE, "").split(), env.get(ENV_DATA_DIR) or None
        ctx = _Ctx(source=ENV_STORAGE if specs else ENV_DATA_DIR)
    return _sugar_locations(storage_locations(specs, ctx, data_dir), ctx, len(config.locations))


_PROBES = ("x", "NA12878", "a/b/c.d", "cohort/sample-1")


def shadowed(config: Config, added: int) -> Optional[str]:
    """A message when the last `added` locations can never be reached: an earlier one takes
    every ID (its regex matches anything, no `formats`, no `fall_through`)."""
    if not added or len(config.locations) <= added:
        return None
    for i, loc in enumerate(config.locations[:-added]):
        if loc.fall_through or loc.formats:
            continue
        try:
            catch_all = all(re.fullmatch(loc.regex, probe) for probe in _PROBES)
        except re.error:
            continue
        if catch_all:
            return (f"the --data-dir/--storage location(s) come after locations[{i}], whose "
                    f"regex {loc.regex!r} takes every ID: they are never reached (set "
                    "fall_through = true there, or give the file's regex a prefix)")
    return None


def load_config(
    path: Optional[str] = None,
    env: Optional[dict[str, str]] = None,
    cli: Optional[dict[str, Any]] = None,
) -> Config:
    """Defaults < the TOML file (`path`, else HTSGET_CONFIG) < HTSGET_* variables < `cli`.

    `data_dir` / `storage` (HTSGET_DATA_DIR / HTSGET_STORAGE) add locations after the
    file's `[[locations]]`, never replace them; with no location anywhere, IDs are files
    under the current directory. Unknown HTSGET_* variables are logged with the nearest
    known name.
    """
    env = dict(os.environ if env is None else env)
    for message in unknown_env(env):
        log.warning("htsgetr: warning: %s", message)
    path = path or env.get(ENV_CONFIG) or None
    config = read_file(path) if path else Config()
    overrides = apply_env(config, env) + apply_cli(config, cli or {})
    added = _added_locations(config, env, cli or {})
    config.locations = config.locations + added
    problem = shadowed(config, len(added))
    if problem:
        log.warning("htsgetr: warning: %s", problem)
    if not config.locations:
        config.locations = [LocationConfig(root=".")]
    source = path or "configuration"
    if overrides:
        source += f" (with {', '.join(overrides)})"
    check_tree(config, "", _Ctx(source=source))
    return config


# --------------------------------------------------------------------------- output helpers

_SECRET = re.compile(
    r"secret|password|passwd|passphrase|token|credential|private|api_?key|authorization|cookie",
    re.IGNORECASE,
)
REDACTED = "***"


def redact(value: Any, secret: bool = False) -> Any:
    """Secret-looking keys (and every `headers` value, and URL passwords) replaced by ***."""
    if isinstance(value, dict):
        return {
            k: redact(v, secret or k == "headers" or bool(_SECRET.search(k)))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v, secret) for v in value]
    if secret and isinstance(value, (str, bytes)):
        return REDACTED
    if isinstance(value, str) and "://" in value:
        parts = urlsplit(value)
        if parts.password:
            return value.replace(f":{parts.password}@", f":{REDACTED}@", 1)
    return value
