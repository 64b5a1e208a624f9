"""Configuration: dataclasses, with TOML (tomllib / tomli) + HTSGET_* environment + CLI layers.

The dataclasses are the single source of truth: the TOML schema, validation and the
commented default file are derived from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class ServerConfig:
    """One HTTP bind (the ticket server, or a separate data server)."""

    host: str = "127.0.0.1"
    port: int = 8080
    #: public URL clients use to reach this server; default http(s)://host:port
    base_url: Optional[str] = None
    workers: int = 2
    threads: int = 4
    timeout: int = 60
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    cors_origins: list[str] = field(default_factory=lambda: ["*"])

    def url(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        scheme = "https" if self.tls_cert else "http"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"


@dataclass
class DataServerConfig(ServerConfig):
    """The /data endpoint. Unless `separate`, it is served by the ticket server's bind."""

    separate: bool = False
    port: int = 8081


@dataclass
class LocationConfig:
    """One ordered ID-resolution rule: `regex` over the ID -> `substitution` -> backend key."""

    #: optional name; also the /data/~<name>/ path segment of this location's data urls
    name: Optional[str] = None
    regex: str = "(.*)"
    substitution: str = "$1"
    backend: str = "file"  # file | s3 | url
    #: file: the root directory
    root: Optional[str] = None
    #: s3: bucket (may use capture groups), key prefix, region, endpoint, ...
    bucket: Optional[str] = None
    prefix: str = ""
    region: Optional[str] = None
    endpoint_url: Optional[str] = None
    path_style: bool = False
    profile: Optional[str] = None
    expires: int = 3600
    #: url: the base URL the substituted key is appended to
    url: Optional[str] = None
    index_url: Optional[str] = None
    mode: str = "redirect"  # url: redirect | proxy; s3: presigned | proxy
    timeout: float = 10.0
    retries: int = 2
    headers: dict[str, str] = field(default_factory=dict)
    forward_headers: list[str] = field(default_factory=list)
    forward_authorization: bool = False
    cache_ttl: float = 0.0
    #: formats served from here (None: all)
    formats: Optional[list[str]] = None
    #: when the object is missing here, try the next matching location
    fall_through: bool = False


@dataclass
class Config:
    ticket_server: ServerConfig = field(default_factory=ServerConfig)
    data_server: DataServerConfig = field(default_factory=DataServerConfig)
    locations: list[LocationConfig] = field(default_factory=list)
    service_info: dict[str, Any] = field(default_factory=dict)
    #: largest accepted POST body, bytes
    max_post_bytes: int = 1 << 20
    #: parsed indexes/headers kept per worker
    cache_entries: int = 256
    #: whole-file md5 is computed (once, cached) for local files up to this size
    md5_max_bytes: int = 1 << 30
    auth: dict[str, Any] = field(default_factory=dict)
    crypt4gh: dict[str, Any] = field(default_factory=dict)
    logging: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

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


def load_config(path: Optional[str] = None, env: Optional[dict[str, str]] = None) -> Config:
    """Configuration from a TOML file (optional) and HTSGET_* environment variables."""
    import os

    env = dict(os.environ if env is None else env)
    data_dir = env.get("HTSGET_DATA_DIR", ".")
    config = for_data_dir(data_dir)
    ts = config.ticket_server
    ts.host = env.get("HTSGET_HOST", ts.host)
    ts.port = int(env.get("HTSGET_PORT", ts.port))
    ts.base_url = env.get("HTSGET_BASE_URL", ts.base_url)
    return config
