"""OpenTelemetry (observability/tracing.py), on: a server span per request, child spans for
resolve, index load, range computation and storage calls; a caller's traceparent continued;
no signature or token in any span attribute. (Off, nothing of it is imported:
test_observability.py::test_tracing_is_free_when_off.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.instrumentation.flask")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

from htsgetr.app import create_app  # noqa: E402
from htsgetr.config import for_data_dir  # noqa: E402
from htsgetr.observability import tracing  # noqa: E402

TRACE = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture(scope="module")
def traced(data_dir: Path) -> tuple[Any, InMemorySpanExporter]:
    """An app with tracing on, its spans kept in memory (OpenTelemetry has one provider per
    process: made here with the in-memory exporter, or given it if made before)."""
    exporter = InMemorySpanExporter()
    config = for_data_dir(str(data_dir))
    config.tracing.enabled = True
    config.tracing.service_name = "htsgetr-test"
    if tracing._provider is None:
        tracing.provider(config.tracing, exporter)
    else:  # pragma: no cover - another test made it
        tracing._provider.add_span_processor(SimpleSpanProcessor(exporter))
    return create_app(config), exporter


def test_a_ticket_request_is_one_trace_of_its_steps(traced: tuple[Any, InMemorySpanExporter]
                                                    ) -> None:
    app, exporter = traced
    exporter.clear()
    resp = app.test_client().get(
        "/reads/sample?referenceName=chr1&start=1000&end=90000&sig=SECRET&access_token=SECRET",
        headers={"traceparent": f"00-{TRACE}-b7ad6b7169203331-01", "X-Request-ID": "tr-1"})
    assert resp.status_code == 200
    spans = exporter.get_finished_spans()
    names = [s.name for s in spans]
    server = next(s for s in spans if s.kind.name == "SERVER")
    assert {"htsgetr.resolve", "htsgetr.ranges", "htsgetr.index.load"} <= set(names), names
    assert any(n.startswith("htsgetr.storage.") for n in names), names
    assert {format(s.context.trace_id, "032x") for s in spans} == {TRACE}  # the caller's
    assert server.attributes["htsgetr.request_id"] == "tr-1"
    assert server.resource.attributes["service.name"] == "htsgetr-test"
    by_id = {s.context.span_id: s for s in spans}
    resolve = next(s for s in spans if s.name == "htsgetr.resolve")
    assert resolve.parent is not None and by_id[resolve.parent.span_id] is server
    assert resolve.attributes["htsget.id"] == "sample"
    for span in spans:
        for value in span.attributes.values():
            assert "SECRET" not in str(value), (span.name, span.attributes)


def test_the_cache_hides_the_index_load_next_time(traced: tuple[Any, InMemorySpanExporter]
                                                  ) -> None:
    app, exporter = traced
    app.test_client().get("/reads/sample?referenceName=chr1")
    exporter.clear()
    app.test_client().get("/reads/sample?referenceName=chr1&start=5")
    names = [s.name for s in exporter.get_finished_spans()]
    assert "htsgetr.ranges" in names and "htsgetr.index.load" not in names


def test_data_requests_are_traced_too(traced: tuple[Any, InMemorySpanExporter]) -> None:
    app, exporter = traced
    exporter.clear()
    resp = app.test_client().get("/data/sample.bam", headers={"Range": "bytes=0-9"})
    assert resp.status_code == 206
    assert [s for s in exporter.get_finished_spans() if s.kind.name == "SERVER"]
