"""Prometheus metrics, correct across gunicorn workers, servers and reloads.

`htsgetr serve` (and `htsgetr.gunicorn_conf`) make a `PROMETHEUS_MULTIPROC_DIR` before any
worker starts — a fresh temporary directory, removed when the server stops, or the one the
environment names, emptied of old `*.db` files — so every worker (of both servers, when /data
has its own) writes its counts to files there (prometheus_client's multiprocess mode), and a
scrape sums them: counts survive a worker's exit and a SIGHUP, which only replaces workers.
`child_exit` marks a dead worker's live gauges gone. Without the directory (AWS Lambda, a
test client) the counts are this process's own.

A scrape is answered at `[metrics] path` on the ticket (and data) server by
prometheus-flask-exporter's endpoint, or on `[metrics] port` by the `htsgetr serve` master.

What is counted (all names start with `htsgetr_`):

- `http_requests_total{endpoint,method,status}`, `http_request_duration_seconds{endpoint,
  status}` (histogram), `http_response_bytes_total{endpoint}`: every request, fast path
  included; `endpoint` is reads | variants | sequences | service-info | data | health |
  metrics | other, never an ID.
- `tickets_total{format,class}`, `ticket_bytes_total{format}` (the bytes a ticket's urls
  cover: byte ranges and inline data).
- `cache_hits_total{cache}`, `cache_misses_total{cache}`, `cache_bytes{cache}`,
  `cache_entries{cache}` (cache: index — parsed indexes and headers — or blocks).
- `storage_calls_total{backend,op}`, `storage_call_duration_seconds{backend,op}`,
  `upstream_requests_total{backend}` (S3 / HTTP requests sent), `upstream_errors_total{
  backend,status}` (storage calls failing on the storage's side: 5xx to the client).
- `build_info{version}`.

Cost: requests, tickets and storage calls are counted into plain per-process tallies (a few
additions under an uncontended lock, ~2 µs a request; no file), written to the metrics (mmap
files, ~1 µs an increment) at most once a second (`FLUSH_SECONDS`): by the request that finds
a flush due, by a background thread in each gunicorn worker (so the last second before a quiet
spell is not held back), before this process answers a scrape, and when a worker exits. A
scrape may miss at most the last second of the other workers' counts; a request's ~8
increments used to cost ~20 µs under load, a tenth of what a small ticket adds to a bare Flask
view.
"""

from __future__ import annotations

import bisect
import glob
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from typing import Any, Callable, Optional

from .._version import __version__
from .keys import QUERY, TICKET

log = logging.getLogger("htsgetr")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: seconds between writes of the per-process storage and cache tallies
FLUSH_SECONDS = 1.0

REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
STORAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: the Storage methods timed (block_url computes a string: not a call to the storage)
STORAGE_OPS = ("exists", "size", "version", "read", "md5", "stat_many", "read_many",
               "prefetch", "stream", "check")
_METHODS = frozenset({"GET", "HEAD", "POST", "OPTIONS", "PUT", "DELETE", "PATCH"})


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


# --------------------------------------------------------------------------- the metrics


class _Families:
    """The metric families of this process, made once (a second app in one process shares
    them: a registry refuses a name twice)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry(auto_describe=True)

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Any:
            return Counter(name, doc, labels, registry=registry)

        self.requests = counter("htsgetr_http_requests", "HTTP requests answered",
                                ("endpoint", "method", "status"))
        self.latency = Histogram(
            "htsgetr_http_request_duration_seconds",
            "Seconds from the request's first byte to the response's last",
            ("endpoint", "status"), buckets=REQUEST_BUCKETS, registry=registry)
        self.sent = counter("htsgetr_http_response_bytes", "Response body bytes sent",
                            ("endpoint",))
        self.tickets = counter("htsgetr_tickets", "Tickets issued", ("format", "class"))
        self.ticket_bytes = counter(
            "htsgetr_ticket_bytes", "Bytes the urls of issued tickets cover (ranges and inline)",
            ("format",))
        self.cache_hits = counter("htsgetr_cache_hits", "Cache lookups answered from memory",
                                  ("cache",))
        self.cache_misses = counter("htsgetr_cache_misses", "Cache lookups that loaded",
                                    ("cache",))
        self.cache_bytes = Gauge("htsgetr_cache_bytes", "Bytes held by the caches (all workers)",
                                 ("cache",), multiprocess_mode="livesum", registry=registry)
        self.cache_entries = Gauge("htsgetr_cache_entries", "Entries in the caches (all workers)",
                                   ("cache",), multiprocess_mode="livesum", registry=registry)
        self.storage_calls = counter("htsgetr_storage_calls", "Calls to a storage backend",
                                     ("backend", "op"))
        self.storage_latency = Histogram(
            "htsgetr_storage_call_duration_seconds", "Seconds a storage call took",
            ("backend", "op"), buckets=STORAGE_BUCKETS, registry=registry)
        self.upstream_requests = counter(
            "htsgetr_upstream_requests", "Requests sent to a remote store (S3, HTTP)",
            ("backend",))
        self.upstream_errors = counter(
            "htsgetr_upstream_errors",
            "Storage calls that failed on the storage's side (a 5xx for the client)",
            ("backend", "status"))
        info = Gauge("htsgetr_build_info", "htsgetr's version", ("version",),
                     multiprocess_mode="max", registry=registry)
        info.labels(__version__).set(1)


_families: Optional[_Families] = None
_families_lock = threading.Lock()


def families() -> _Families:
    global _families
    if _families is None:
        with _families_lock:
            if _families is None:
                _families = _Families()
    return _families


class _Tally:
    """Calls of one (backend, op), kept in plain numbers until `Recorder.flush`."""

    __slots__ = ("calls", "seconds", "buckets")

    def __init__(self) -> None:
        self.calls = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(STORAGE_BUCKETS) + 1)

    def add(self, seconds: float) -> None:
        self.calls += 1
        self.seconds += seconds
        self.buckets[bisect.bisect_left(STORAGE_BUCKETS, seconds)] += 1


class _RequestTally:
    """Requests of one (endpoint, method, status), kept in plain numbers until the flush."""

    __slots__ = ("calls", "seconds", "buckets", "sent")

    def __init__(self) -> None:
        self.calls = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(REQUEST_BUCKETS) + 1)
        self.sent = 0


class Recorder:
    """The metrics of one app (one engine): `request` at the end of each request; storage
    calls through `instrument`; cache counters read from the engine's caches."""

    def __init__(self, engine: Any = None) -> None:
        self.f = families()
        self.engine = engine
        #: requests by (endpoint, method, status) and tickets by (format, class): [count,
        #: bytes] since the last flush (`flush` swaps in empty ones)
        self.requests: dict[tuple[str, str, int], _RequestTally] = {}
        self.tickets: dict[tuple[Any, Any], list[int]] = {}
        self.tallies: dict[tuple[str, str], _Tally] = {}
        self._upstream: list[tuple[str, Any, list[int]]] = []  # (backend, storage, [last])
        self._cache_last: dict[str, list[float]] = {}
        self._next_flush = 0.0
        self._flush_lock = threading.Lock()
        self._tally_lock = threading.Lock()
        self._flusher_pid = 0  # the process whose background flusher runs

    # ------------------------------------------------------------------ per request

    def request(self, environ: dict[str, Any], endpoint: str, status: int,
                sent: Optional[int], seconds: float) -> None:
        method = environ.get("REQUEST_METHOD", "")
        key = (endpoint, method if method in _METHODS else "other", status)
        ticket = environ.get(TICKET) if status == 200 else None
        covered = ticket_bytes(ticket) if ticket is not None else 0
        with self._tally_lock:  # exact under threads (gthread) too; ~0.1 us uncontended
            tally = self.requests.get(key)
            if tally is None:
                tally = self.requests[key] = _RequestTally()
            tally.calls += 1
            tally.seconds += seconds
            tally.buckets[bisect.bisect_left(REQUEST_BUCKETS, seconds)] += 1
            if sent:
                tally.sent += sent
            if ticket is not None:
                self._ticket(ticket, environ.get(QUERY), covered)
        now = time.monotonic()
        if now >= self._next_flush:
            self.flush(now)

    def _ticket(self, ticket: Any, query: Any, covered: int) -> None:
        key = (ticket.format, getattr(query, "klass", None))
        counts = self.tickets.get(key)
        if counts is None:
            counts = self.tickets[key] = [0, 0]
        counts[0] += 1
        counts[1] += covered

    # ------------------------------------------------------------------ tallies

    def flush(self, now: Optional[float] = None, wait: bool = False) -> None:
        """Write the tallies gathered since the last flush. A flush under way elsewhere
        makes this one a no-op, unless `wait` (a worker's exit: nothing may stay behind)."""
        if not self._flush_lock.acquire(blocking=wait):
            return
        try:
            self._next_flush = (now if now is not None else time.monotonic()) + FLUSH_SECONDS
            if self._flusher_pid != os.getpid() and multiprocess():
                self._flusher_pid = os.getpid()  # (a worker forked after the first flush)
                _start_flusher(self)
            f = self.f
            with self._tally_lock:  # swapped first: requests meanwhile land in new ones
                requests, self.requests = self.requests, {}
                tickets, self.tickets = self.tickets, {}
            for (endpoint, method, status), counted in requests.items():
                f.requests.labels(endpoint, method, status).inc(counted.calls)
                add_to_histogram(f.latency.labels(endpoint, status), counted.buckets,
                                 counted.seconds)
                if counted.sent:
                    f.sent.labels(endpoint).inc(counted.sent)
            for (fmt, klass), (count, covered) in tickets.items():
                f.tickets.labels(fmt.value, "all" if klass is None else klass.value).inc(count)
                if covered:
                    f.ticket_bytes.labels(fmt.value).inc(covered)
            for (backend, op), tally in list(self.tallies.items()):
                if not tally.calls:
                    continue
                fresh = _Tally()  # swapped first: calls meanwhile land in the new one
                self.tallies[(backend, op)] = fresh
                f.storage_calls.labels(backend, op).inc(tally.calls)
                add_to_histogram(f.storage_latency.labels(backend, op), tally.buckets,
                                 tally.seconds)
            for backend, storage, last in self._upstream:
                calls = getattr(storage, "calls", 0)
                if isinstance(calls, int) and calls > last[0]:
                    f.upstream_requests.labels(backend).inc(calls - last[0])
                    last[0] = calls
            self._flush_caches()
        finally:
            self._flush_lock.release()

    def _flush_caches(self) -> None:
        cache = getattr(self.engine, "cache", None)
        if cache is None:
            return
        f = self.f
        for name, obj in (("index", cache), ("blocks", getattr(cache, "blocks", None))):
            if obj is None:
                continue
            now = [obj.hits, obj.misses, obj.nbytes, len(obj)]
            last = self._cache_last.setdefault(name, [0, 0, -1, -1])
            if now[0] > last[0]:
                f.cache_hits.labels(name).inc(now[0] - last[0])
            if now[1] > last[1]:
                f.cache_misses.labels(name).inc(now[1] - last[1])
            if now[2] != last[2]:
                f.cache_bytes.labels(name).set(now[2])
            if now[3] != last[3]:
                f.cache_entries.labels(name).set(now[3])
            self._cache_last[name] = now

    # ------------------------------------------------------------------ storage calls

    def instrument(self, engine: Any) -> None:
        """Time every storage call of the engine's locations (instance attributes: the
        classes, and any engine this recorder does not own, stay as they are)."""
        self.engine = engine
        for _, location, storage in engine.resolver.rules:
            backend = location.backend
            if getattr(storage, "_htsgetr_metrics", None) is not None:
                continue  # another app of this process already times it
            for op in STORAGE_OPS:
                method = getattr(storage, op, None)
                if method is None or not callable(method):
                    continue
                tally = self.tallies.setdefault((backend, op), _Tally())
                setattr(storage, op, self._timed(method, backend, op, tally))
            storage._htsgetr_metrics = self
            if isinstance(getattr(storage, "calls", None), int):
                self._upstream.append((backend, storage, [storage.calls]))

    def _timed(self, method: Callable[..., Any], backend: str, op: str, _tally: _Tally
               ) -> Callable[..., Any]:
        tallies = self.tallies
        key = (backend, op)
        errors = self.f.upstream_errors
        clock = time.perf_counter
        where = bisect.bisect_left
        bounds = STORAGE_BUCKETS

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                result = method(*args, **kwargs)
            except Exception as err:
                status = getattr(err, "status", 0)
                if isinstance(status, int) and status >= 500:
                    errors.labels(backend, str(status)).inc()
                tallies[key].add(clock() - started)
                raise
            took = clock() - started
            tally = tallies[key]  # (`flush` swaps in a fresh one)
            tally.calls += 1
            tally.seconds += took
            tally.buckets[where(bounds, took)] += 1
            return result

        timed.__wrapped__ = method  # type: ignore[attr-defined]
        return timed


def _start_flusher(recorder: Recorder) -> None:
    """Flush `recorder` every FLUSH_SECONDS from a daemon thread (a greenlet under gevent's
    patched threading) while it lives: counts reach the metrics files when traffic stops."""
    ref = weakref.ref(recorder)

    def run() -> None:
        while True:
            time.sleep(max(FLUSH_SECONDS, 0.05))
            alive = ref()
            if alive is None:
                return
            try:
                alive.flush()
            except Exception:  # pragma: no cover - never let a flush kill the thread
                log.exception("metrics flush failed")
            del alive

    threading.Thread(target=run, name="htsgetr-metrics-flush", daemon=True).start()


def flush_all() -> None:
    """Write every recorder's tallies of this process (a worker's exit)."""
    for recorder in list(_RECORDERS):
        recorder.flush(wait=True)


def add_to_histogram(child: Any, buckets: list[int], seconds: float) -> None:
    """Add a tally (counts per bucket, as `STORAGE_BUCKETS` + +Inf, and their sum) to a
    histogram child at once: what that many `observe` calls would add."""
    values = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if values is None or total is None or len(values) != len(buckets):  # pragma: no cover
        n = sum(buckets)  # another prometheus_client: observe the mean, n times
        for _ in range(n):
            child.observe(seconds / n)
        return
    for i, count in enumerate(buckets):
        if count:
            values[i].inc(count)
    total.inc(seconds)


def ticket_bytes(ticket: Any) -> int:
    """Bytes a ticket's urls cover: each Range, each inline block's data, and (no Range) a
    whole object counts as 0: its size is not known here."""
    total = 0
    for block in ticket.blocks:
        url = block.url
        if url.startswith("data:"):
            comma = url.find(",")
            b64 = len(url) - comma - 1
            total += b64 * 3 // 4 - (url.endswith("==") + url.endswith("="))
            continue
        headers = block.headers
        rng = headers.get("Range") if headers else None
        if rng and rng.startswith("bytes="):
            first, _, last = rng[6:].partition("-")
            if first.isdigit() and last.isdigit():
                total += int(last) - int(first) + 1
    return total


# --------------------------------------------------------------------------- exposition


def registry() -> Any:
    """What a scrape reads: every process's files (multiprocess mode), else this process."""
    if multiprocess():
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        reg = CollectorRegistry()
        MultiProcessCollector(reg)  # type: ignore[no-untyped-call,unused-ignore]
        return reg
    return families().registry


def install_endpoint(app: Any, path: str) -> None:
    """`path` on the Flask app answers a scrape (prometheus-flask-exporter's endpoint; its
    per-request hooks stay off: `Observe` counts every request, fast path included)."""
    from prometheus_flask_exporter import PrometheusMetrics

    PrometheusMetrics(app, path=path, export_defaults=False, registry=families().registry)


# --------------------------------------------------------------------------- the gunicorn side


class MultiprocDir:
    """The directory every worker writes its metrics to (see the module docstring)."""

    def __init__(self) -> None:
        given = os.environ.get(MULTIPROC_ENV)
        self.owned = not given
        if given:
            os.makedirs(given, exist_ok=True)
            for stale in glob.glob(os.path.join(given, "*.db")):  # a previous run's counts
                try:
                    os.unlink(stale)
                except OSError:
                    pass
            self.path = given
        else:
            self.path = tempfile.mkdtemp(prefix="htsgetr-metrics-")
            os.environ[MULTIPROC_ENV] = self.path
        self.pid = os.getpid()

    def cleanup(self) -> None:
        """Remove the directory this process made (nothing in one given to it)."""
        if self.owned and os.getpid() == self.pid:
            shutil.rmtree(self.path, ignore_errors=True)


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn hook (master): a worker is gone, so are its live gauges."""
    if multiprocess():
        from prometheus_client import multiprocess as mp

        try:
            mp.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call,unused-ignore]
        except OSError:  # pragma: no cover - the directory went away
            pass


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn hook (worker): write what the tallies hold before the process goes."""
    try:
        flush_all()
    except Exception:  # pragma: no cover - never block an exit
        log.exception("metrics flush at worker exit failed")


_RECORDERS: weakref.WeakSet[Recorder] = weakref.WeakSet()


def recorder_for(engine: Any) -> Recorder:
    """The recorder of an engine: made once per engine (apps sharing an engine share it)."""
    recorder: Optional[Recorder] = getattr(engine, "_htsgetr_recorder", None)
    if recorder is None:
        recorder = Recorder()
        recorder.instrument(engine)
        engine._htsgetr_recorder = recorder
        _RECORDERS.add(recorder)
    return recorder


def start_server(host: str, port: int) -> tuple[Any, int]:
    """Answer scrapes on host:port from this process (the `htsgetr serve` master), in a
    thread: (server, bound port)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=registry())
    return server, int(server.server_address[1])
