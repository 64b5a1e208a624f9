"""What operators see of a running htsgetr (README "Operations: metrics, logs, traces,
health"): log lines (text or JSON) that never carry a secret, one access line and a request
ID per request, Prometheus metrics summed over workers, OpenTelemetry traces, /healthz and
/readyz.

- `redact`: secrets out of text (signatures, presigned query strings, tokens).
- `logs`: formatters, the access line, gunicorn's `RedactingLogger`, the request ID.
- `middleware`: `Observe`, the outermost WSGI layer of every app (fast path included).
- `metrics`: prometheus-flask-exporter / prometheus_client in multiprocess mode.
- `tracing`: OpenTelemetry (imported only when `[tracing] enabled`).
- `schema`: the `[logging]`, `[metrics]`, `[tracing]`, `[health]` tables.
- `api/health.py`: /healthz and /readyz.

Importing this package is cheap (no gunicorn, no prometheus_client, no OpenTelemetry);
`install` wires an app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .redact import REDACTED, redact_text, redact_url

if TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

    from ..config import Config
    from .logs import RedactingLogger as RedactingLogger
    from .logs import redact_refusal as redact_refusal

__all__ = ["REDACTED", "RedactingLogger", "install", "redact_refusal", "redact_text",
           "redact_url"]


def __getattr__(name: str) -> Any:
    """`RedactingLogger` (gunicorn's `logger_class = "htsgetr.observability.RedactingLogger"`)
    and `redact_refusal`, imported when asked for."""
    if name in ("RedactingLogger", "redact_refusal"):
        from . import logs

        return getattr(logs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def install(app: Flask, config: Config) -> None:
    """Health routes, the metrics endpoint and recorder, tracing when on, and `Observe`
    around everything (call it last: it must be the outermost WSGI layer)."""
    from ..api import health
    from .middleware import Observe, Observer

    engine = app.extensions["htsgetr"]
    app.register_blueprint(health.bp)
    recorder, metrics_path = None, None
    if config.metrics.enabled:
        from . import metrics

        recorder = metrics.recorder_for(engine)
        if config.metrics.port is None:
            metrics.install_endpoint(app, config.metrics.path)
            metrics_path = config.metrics.path
    if config.tracing.enabled:
        from . import tracing

        try:
            tracing.install(app, engine, config.tracing)
        except ImportError as err:
            raise RuntimeError(f"tracing.enabled needs OpenTelemetry: pip install"
                               f" 'htsgetr[tracing]' ({err})") from None
    observer = Observer(config.logging, recorder, metrics_path)
    app.wsgi_app = Observe(app.wsgi_app, observer)  # type: ignore[method-assign]


def gunicorn_hooks(config: Config) -> dict[str, Any]:
    """gunicorn settings of the observability layer: the log level, and the hooks that keep
    the metrics right across workers (`metrics.child_exit`, `worker_exit`)."""
    from .metrics import child_exit

    return {"loglevel": config.logging.level, "child_exit": child_exit,
            "worker_exit": worker_exit}


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn hook (in the worker): the metrics tallies and queued spans go out."""
    import sys

    if "htsgetr.observability.metrics" in sys.modules:
        sys.modules["htsgetr.observability.metrics"].worker_exit(server, worker)
    if "htsgetr.observability.tracing" in sys.modules:
        sys.modules["htsgetr.observability.tracing"].shutdown()
