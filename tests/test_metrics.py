"""Prometheus metrics in one process (observability/metrics.py): every request counted,
fast path included, tickets by format and class, bytes ticketed, caches, storage calls and
their latency, upstream errors; the exposition endpoint; the tally arithmetic."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest

from htsgetr.app import create_app
from htsgetr.config import for_data_dir
from htsgetr.engine import Htsget
from htsgetr.observability import metrics
from htsgetr.protocol import Block, Format, Ticket, UpstreamError

pytest.importorskip("prometheus_client")

TICKET = "/reads/sample?referenceName=chr1&start=1000&end=90000"


def value(name: str, **labels: str) -> float:
    got = metrics.families().registry.get_sample_value(name, labels)
    return float(got or 0.0)


def get(app: Any, path: str, **kw: Any) -> Any:
    resp = app.test_client().get(path, **kw)
    resp.close()  # the end of the request
    return resp


def covered(ticket: dict[str, Any]) -> int:
    """Bytes a ticket's urls cover, from its JSON."""
    total = 0
    for block in ticket["htsget"]["urls"]:
        if block["url"].startswith("data:"):
            total += len(base64.b64decode(block["url"].split(",", 1)[1]))
        else:
            first, last = block["headers"]["Range"].split("=")[1].split("-")
            total += int(last) - int(first) + 1
    return total


@pytest.fixture()
def flush_always(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "FLUSH_SECONDS", 0.0)


def test_every_request_is_counted_fast_path_included(data_dir: Path, flush_always: None
                                                     ) -> None:
    app = create_app(for_data_dir(str(data_dir)))
    get(app, "/service-info")  # Flask's first request
    shortcut = app.wsgi_app.app
    before = {
        "ok": value("htsgetr_http_requests_total", endpoint="reads", method="GET", status="200"),
        "missing": value("htsgetr_http_requests_total", endpoint="reads", method="GET",
                         status="404"),
        "data": value("htsgetr_http_requests_total", endpoint="data", method="GET",
                      status="206"),
        "latency": value("htsgetr_http_request_duration_seconds_count", endpoint="reads",
                         status="200"),
        "sent": value("htsgetr_http_response_bytes_total", endpoint="reads"),
        "tickets": value("htsgetr_tickets_total", format="BAM", **{"class": "all"}),
        "headers": value("htsgetr_tickets_total", format="BAM", **{"class": "header"}),
        "ticketed": value("htsgetr_ticket_bytes_total", format="BAM"),
        "vcf": value("htsgetr_tickets_total", format="VCF", **{"class": "all"}),
    }
    served = shortcut.served
    sent = ticketed = 0
    for i in range(10):
        resp = get(app, f"/reads/sample?referenceName=chr1&start={i * 1000}&end=90000")
        sent += len(resp.data)
        ticketed += covered(resp.get_json())
    header = get(app, "/reads/sample?class=header")
    sent += len(header.data)
    ticketed += covered(header.get_json())
    post = app.test_client().post("/variants/calls", json={"format": "VCF"})
    post.close()
    for _ in range(3):
        sent += len(get(app, "/reads/absent").data)
    get(app, "/data/sample.bam", headers={"Range": "bytes=0-9"})
    assert shortcut.served - served >= 15  # the GETs went the fast way
    assert value("htsgetr_http_requests_total", endpoint="reads", method="GET", status="200") \
        - before["ok"] == 11
    assert value("htsgetr_http_requests_total", endpoint="reads", method="GET", status="404") \
        - before["missing"] == 3
    assert value("htsgetr_http_requests_total", endpoint="data", method="GET", status="206") \
        - before["data"] == 1
    assert value("htsgetr_http_request_duration_seconds_count", endpoint="reads", status="200") \
        - before["latency"] == 11
    assert value("htsgetr_http_response_bytes_total", endpoint="reads") - before["sent"] == sent
    assert value("htsgetr_tickets_total", format="BAM", **{"class": "all"}) \
        - before["tickets"] == 10
    assert value("htsgetr_tickets_total", format="BAM", **{"class": "header"}) \
        - before["headers"] == 1
    assert value("htsgetr_tickets_total", format="VCF", **{"class": "all"}) - before["vcf"] == 1
    assert value("htsgetr_ticket_bytes_total", format="BAM") - before["ticketed"] == ticketed


def test_caches_and_storage_calls(data_dir: Path, flush_always: None) -> None:
    app = create_app(for_data_dir(str(data_dir)))
    calls = value("htsgetr_storage_calls_total", backend="file", op="exists")
    timed = value("htsgetr_storage_call_duration_seconds_count", backend="file", op="exists")
    hits = value("htsgetr_cache_hits_total", cache="index")
    misses = value("htsgetr_cache_misses_total", cache="index")
    for _ in range(5):
        get(app, TICKET)
    get(app, "/healthz")  # one more request: the last tallies go out
    assert value("htsgetr_storage_calls_total", backend="file", op="exists") - calls >= 5
    assert value("htsgetr_storage_call_duration_seconds_count", backend="file", op="exists") \
        == value("htsgetr_storage_calls_total", backend="file", op="exists") - calls + timed
    assert value("htsgetr_cache_misses_total", cache="index") - misses >= 1
    assert value("htsgetr_cache_hits_total", cache="index") - hits >= 4
    assert value("htsgetr_cache_bytes", cache="index") > 0
    assert value("htsgetr_cache_entries", cache="index") >= 1


def test_storage_tallies_wait_for_the_flush(data_dir: Path) -> None:
    """Storage and cache counts are written at most once per FLUSH_SECONDS (and when a
    worker exits), not per call."""
    engine = Htsget(for_data_dir(str(data_dir)))
    app = create_app(engine.config, engine=engine)
    recorder = metrics.recorder_for(engine)
    get(app, TICKET)  # the first request flushes
    before = value("htsgetr_storage_calls_total", backend="file", op="version")
    for _ in range(3):
        get(app, TICKET)
    assert value("htsgetr_storage_calls_total", backend="file", op="version") == before
    assert recorder.tallies[("file", "version")].calls >= 3
    metrics.worker_exit(None, None)  # gunicorn's worker_exit hook
    assert value("htsgetr_storage_calls_total", backend="file", op="version") - before >= 3


def test_upstream_errors_are_counted(data_dir: Path, flush_always: None) -> None:
    engine = Htsget(for_data_dir(str(data_dir)))
    storage = engine.resolver.rules[0][2]

    def exists(key: str) -> bool:
        raise UpstreamError("the store is down", 503)

    storage.exists = exists  # type: ignore[method-assign]
    app = create_app(engine.config, engine=engine)
    before = value("htsgetr_upstream_errors_total", backend="file", status="503")
    assert get(app, TICKET).status_code == 503
    assert value("htsgetr_upstream_errors_total", backend="file", status="503") - before == 1
    assert value("htsgetr_http_requests_total", endpoint="reads", method="GET",
                 status="503") >= 1


def test_apps_sharing_an_engine_time_its_storage_once(data_dir: Path) -> None:
    engine = Htsget(for_data_dir(str(data_dir)))
    create_app(engine.config, engine=engine)
    create_app(engine.config, engine=engine, role="data")
    storage = engine.resolver.rules[0][2]
    inner = storage.exists.__wrapped__  # type: ignore[attr-defined]
    assert not hasattr(inner, "__wrapped__")  # one timing layer, not two


def test_the_endpoint(data_dir: Path) -> None:
    app = create_app(for_data_dir(str(data_dir)))
    get(app, TICKET)
    resp = app.test_client().get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = resp.get_data(as_text=True)
    assert 'htsgetr_http_requests_total{endpoint="reads",method="GET",status="200"}' in text
    assert "htsgetr_build_info" in text
    assert "sample" not in text  # no ID in any label
    other = for_data_dir(str(data_dir))
    other.metrics.path = "/internal/metrics"
    app = create_app(other)
    assert app.test_client().get("/internal/metrics").status_code == 200
    assert app.test_client().get("/metrics").status_code == 404


def test_off_and_on_another_port(data_dir: Path) -> None:
    config = for_data_dir(str(data_dir))
    config.metrics.enabled = False
    app = create_app(config)
    assert app.test_client().get("/metrics").status_code == 404
    assert app.wsgi_app.observer.recorder is None
    get(app, "/service-info")
    get(app, TICKET)
    assert app.wsgi_app.served == 1  # the fast path is on either way
    config = for_data_dir(str(data_dir))
    config.metrics.port = 0  # the master answers scrapes: not the public port
    app = create_app(config)
    assert app.test_client().get("/metrics").status_code == 404
    assert app.wsgi_app.observer.recorder is not None


def test_the_master_serves_what_every_worker_counted(tmp_path: Path) -> None:
    """`start_server` (the `htsgetr serve` master) in multiprocess mode sums the files of
    every process, here two children that counted 3 and 4 requests."""
    code = """
import sys
from htsgetr.observability import metrics
rec = metrics.Recorder()
for _ in range(int(sys.argv[1])):
    rec.request({"REQUEST_METHOD": "GET"}, "reads", 200, 10, 0.01)
rec.flush()  # as a worker's exit does
"""
    env = {**os.environ, metrics.MULTIPROC_ENV: str(tmp_path)}
    for n in (3, 4):
        subprocess.run([sys.executable, "-c", code, str(n)], env=env, check=True, timeout=60)
    probe = """
import requests
from htsgetr.observability import metrics
server, port = metrics.start_server("127.0.0.1", 0)
print(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
"""
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    line = next(x for x in out.splitlines()
                if x.startswith('htsgetr_http_requests_total{endpoint="reads"'))
    assert float(line.split()[-1]) == 7.0


def test_add_to_histogram_is_many_observes() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    registry = CollectorRegistry()
    one = Histogram("a_seconds", "a", buckets=metrics.STORAGE_BUCKETS, registry=registry)
    many = Histogram("b_seconds", "b", buckets=metrics.STORAGE_BUCKETS, registry=registry)
    tally = metrics._Tally()
    for seconds in (0.00001, 0.0003, 0.0003, 0.002, 0.7, 11.0, 0.0001):
        one.observe(seconds)
        tally.add(seconds)
    metrics.add_to_histogram(many, tally.buckets, tally.seconds)

    def samples(name: str) -> list[tuple[str, Optional[str], float]]:
        return [(s.name[1:], s.labels.get("le"), s.value) for s in registry.collect()
                if s.name.startswith(name) for s in s.samples if "created" not in s.name]

    assert samples("a") == samples("b") and samples("a")


def test_ticket_bytes() -> None:
    data = b"0123456789abcdef!"
    for payload in (data, data[:16], data[:15]):  # every padding
        inline = "data:;base64," + base64.b64encode(payload).decode()
        ticket = Ticket(Format.BAM, [Block(inline), Block("https://h/x", {"Range": "bytes=5-14"}),
                                     Block("https://h/whole")])
        assert metrics.ticket_bytes(ticket) == len(payload) + 10


def test_a_scrape_sees_every_request_before_it(data_dir: Path) -> None:
    """Requests are tallied and written once a second; a scrape of this process writes
    them first, so it misses none."""
    app = create_app(for_data_dir(str(data_dir)))
    get(app, TICKET)  # the first request flushes; the next ones wait in the tally
    labels = {"endpoint": "reads", "method": "GET", "status": "200"}
    before = value("htsgetr_http_requests_total", **labels)
    tickets = value("htsgetr_tickets_total", format="BAM", **{"class": "all"})
    for _ in range(3):
        get(app, TICKET)
    assert value("htsgetr_http_requests_total", **labels) == before  # not yet written
    text = get(app, "/metrics").get_data(as_text=True)
    line = next(x for x in text.splitlines()
                if x.startswith('htsgetr_http_requests_total{endpoint="reads",method="GET",'
                                'status="200"}'))
    assert float(line.split()[-1]) == before + 3
    assert value("htsgetr_tickets_total", format="BAM", **{"class": "all"}) == tickets + 3
