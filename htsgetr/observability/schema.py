"""`[logging]`, `[metrics]`, `[tracing]` and `[health]`: what an operator sees of a running
server (README "Operations: metrics, logs, traces, health")."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from ..typed_config import _Ctx, _opt, check_http_url

LEVELS = ("debug", "info", "warning", "error", "critical")
_PATH = re.compile(r"/[A-Za-z0-9._~/-]*")


def _check_path(value: str, key: str, ctx: _Ctx) -> str:
    if not _PATH.fullmatch(value) or value in ("/", "/data") or value.startswith("/data/") \
            or value.split("/")[1] in ("reads", "variants", "sequences", "service-info",
                                       "healthz", "readyz"):
        raise ctx.error(key, f"{value!r}: a URL path of its own, e.g. \"/metrics\"")
    return value


def _check_paths(value: list[str], key: str, ctx: _Ctx) -> list[str]:
    for i, path in enumerate(value):
        if not path.startswith("/"):
            raise ctx.error(f"{key}[{i}]", f"{path!r}: a URL path starting with '/'")
    return value


@dataclass
class LoggingConfig:
    """Log lines of the servers (gunicorn's own included) and one access line per request."""

    format: str = _opt(
        "text", "text: one human-readable line per record | json: one JSON object per line",
        choices=("text", "json"),
    )
    level: str = _opt("info", "least severe record written", choices=LEVELS)
    access_log: bool = _opt(
        True, "one line per request: method, path (secrets removed), status, bytes, latency,"
        " request ID, and the ID, format, class and region count of a ticket",
    )
    access_exclude: list[str] = _opt(
        doc="paths whose requests write no access line (still counted in the metrics)",
        factory=lambda: ["/healthz", "/readyz"],
        check=_check_paths,
    )


@dataclass
class MetricsConfig:
    """Prometheus metrics, summed over every worker (and both servers of one `htsgetr serve`)."""

    enabled: bool = _opt(True, "count requests, tickets, caches and storage calls")
    path: str = _opt(
        "/metrics", "where the ticket (and data) server answers a scrape, unless `port` is set",
        check=_check_path,
    )
    port: Optional[int] = _opt(
        None,
        "serve the metrics on this port instead (any path), from the `htsgetr serve` master:"
        " off the public port; 0 picks a free one",
        min=0, max=65535,
    )
    host: str = _opt("127.0.0.1", "address of `port`: 0.0.0.0 (or ::) for every interface")


@dataclass
class TracingConfig:
    """OpenTelemetry traces (pip install 'htsgetr[tracing]'): a span per request, and spans
    for resolve, index load, range computation and storage calls. Off: nothing is imported
    and no request does any tracing work."""

    enabled: bool = _opt(False, "export traces")
    exporter: str = _opt(
        "otlp", "otlp: to `endpoint` (or the OTEL_EXPORTER_OTLP_* environment) | console",
        choices=("otlp", "console"),
    )
    endpoint: Optional[str] = _opt(
        None,
        "OTLP/HTTP traces url, e.g. http://collector:4318/v1/traces (default: the"
        " OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT environment, else http://localhost:4318)",
        check=check_http_url,
    )
    service_name: str = _opt("htsgetr", "the service.name resource attribute")
    sample_ratio: float = _opt(
        1.0, "fraction of traces started here that are kept (a parent's decision wins)",
        min=0.0, max=1.0,
    )


@dataclass
class HealthConfig:
    """GET /healthz (the process answers) and GET /readyz (configuration loaded, locations
    usable): public, no token, JSON, 200 or 503."""

    probe_storage: bool = _opt(
        False,
        "readyz also asks every location's storage (a directory check; S3: the bucket, one"
        " request; url: nothing to ask) — otherwise only local directories are checked",
    )
    probe_interval: float = _opt(
        10.0, "seconds a storage probe's answer is reused (probes of many replicas add up)",
        min=0.0,
    )
