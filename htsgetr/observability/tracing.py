"""OpenTelemetry traces (`[tracing]`, off by default; `pip install 'htsgetr[tracing]'`).

On: a server span per request (opentelemetry-instrumentation-flask; a W3C `traceparent` from
the client or a proxy makes it a child of the caller's trace), and inside it spans for what a
ticket costs: `htsgetr.resolve` (the ID through the locations), `htsgetr.index.load` (an
index or header parsed: a cache miss), `htsgetr.ranges` (the byte ranges computed) and
`htsgetr.storage.<op>` (each storage call). Spans go to an OTLP/HTTP collector (`endpoint`, or
the standard OTEL_EXPORTER_OTLP_* environment) in batches from a background thread of each
worker.

Off: this module is not even imported; no request does any tracing work. On, the instrumented
app answers every request through Flask (api/fast.py steps aside for any hook it does not
know), so tracing costs what Flask's dispatch costs beside the spans themselves.

Secrets: the query string of a signed /data url or a presigned url is redacted in the span's
attributes (`http.target`, `url.query`, ...), like in the logs.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any, Callable, Optional

from .keys import REQUEST_ID
from .redact import redact_url
from .schema import TracingConfig

log = logging.getLogger("htsgetr")

_provider: Any = None
_lock = threading.Lock()
_URL_ATTRIBUTES = ("http.target", "http.url", "url.full", "url.query")


def provider(config: TracingConfig, exporter: Any = None) -> Any:
    """This process's tracer provider (made once: OpenTelemetry has one per process)."""
    global _provider
    with _lock:
        if _provider is not None:
            return _provider
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        from .._version import __version__

        made = TracerProvider(
            resource=Resource.create({"service.name": config.service_name,
                                      "service.version": __version__}),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        )
        if exporter is not None:  # tests: spans at once, in memory
            made.add_span_processor(SimpleSpanProcessor(exporter))
        elif config.exporter == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            made.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            # no endpoint: the exporter reads OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT itself
            made.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=config.endpoint)))
        trace.set_tracer_provider(made)
        _provider = made
        return made


def shutdown() -> None:
    """Send the spans still queued (a worker about to exit)."""
    if _provider is not None:
        try:
            _provider.force_flush(5000)
        except Exception:  # pragma: no cover - never block an exit
            log.exception("tracing flush failed")


def install(app: Any, engine: Any, config: TracingConfig, exporter: Any = None) -> None:
    """Trace the Flask app's requests and the engine's work (see the module docstring)."""
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    tracer_provider = provider(config, exporter)
    tracer = tracer_provider.get_tracer("htsgetr")

    def request_hook(span: Any, environ: dict[str, Any]) -> None:
        rid = environ.get(REQUEST_ID)
        if rid and span is not None and span.is_recording():
            span.set_attribute("htsgetr.request_id", rid)

    def response_hook(span: Any, status: str, headers: Any) -> None:
        """The url attributes, redacted: the last word on them (the instrumentation sets
        them again after `request_hook`)."""
        if span is None or not span.is_recording():
            return
        attributes = getattr(span, "attributes", None) or {}
        for name in _URL_ATTRIBUTES:
            value = attributes.get(name)
            if isinstance(value, str):
                span.set_attribute(name, redact_url(value))

    FlaskInstrumentor().instrument_app(  # type: ignore[no-untyped-call,unused-ignore]
        app, request_hook=request_hook, response_hook=response_hook,
        tracer_provider=tracer_provider)
    instrument_engine(engine, tracer)


def instrument_engine(engine: Any, tracer: Any) -> None:
    """Spans around the engine's steps, by wrapping this engine's own objects (instance
    attributes: the classes stay as they are)."""
    if getattr(engine, "_htsgetr_traced", False):
        return
    engine._htsgetr_traced = True
    engine.locate = _spanned(tracer, "htsgetr.resolve", engine.locate,
                             lambda a, k: {"htsget.id": a[0], "htsget.format": a[1].value})
    for handler in engine.handlers.values():
        pieces = getattr(handler, "pieces", None)
        if pieces is not None:
            handler.pieces = _spanned(tracer, "htsgetr.ranges", pieces, _ranges_attributes)
    cache = engine.cache
    get_or_load = cache.get_or_load

    def traced_get_or_load(key: Any, load: Callable[[], Any], *args: Any, **kw: Any) -> Any:
        def loading() -> Any:
            with tracer.start_as_current_span("htsgetr.index.load") as span:
                if isinstance(key, tuple) and len(key) > 3:
                    span.set_attribute("htsgetr.object", str(key[1]))
                    span.set_attribute("htsgetr.kind", str(key[3]))
                return load()

        return get_or_load(key, loading, *args, **kw)  # (whatever else it takes, as is)

    cache.get_or_load = traced_get_or_load
    from .metrics import STORAGE_OPS

    for _, location, storage in engine.resolver.rules:
        if getattr(storage, "_htsgetr_traced", False):
            continue
        storage._htsgetr_traced = True
        for op in STORAGE_OPS:
            method = getattr(storage, op, None)
            if method is not None and callable(method):
                setattr(storage, op, _spanned(
                    tracer, f"htsgetr.storage.{op}", method,
                    functools.partial(_storage_attributes, location.backend)))


def _ranges_attributes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    query = args[1] if len(args) > 1 else kwargs.get("query")
    regions = getattr(query, "regions", None)
    return {"htsget.regions": len(regions) if regions is not None else 0}


def _storage_attributes(backend: str, args: tuple[Any, ...], kwargs: dict[str, Any]
                        ) -> dict[str, Any]:
    out: dict[str, Any] = {"htsgetr.backend": backend}
    if args and isinstance(args[0], str):
        out["htsgetr.key"] = args[0]
    return out


def _spanned(tracer: Any, name: str, method: Callable[..., Any],
             attributes: Optional[Callable[[tuple[Any, ...], dict[str, Any]], dict[str, Any]]]
             = None) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        with tracer.start_as_current_span(name) as span:
            if attributes is not None and span.is_recording():
                try:
                    span.set_attributes(attributes(args, kwargs))
                except Exception:  # attributes never break the call
                    pass
            return method(*args, **kwargs)

    call.__wrapped__ = method  # type: ignore[attr-defined]
    return call
