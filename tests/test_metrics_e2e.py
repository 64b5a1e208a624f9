"""Metrics under a real `htsgetr serve --workers 2`: /metrics counts the requests both workers
served, exactly, and keeps counting across a SIGHUP (new workers, counts kept; the old
workers' live gauges dropped); the metrics directory is made and removed by the server; a
metrics port of its own is answered by the master, off the public port."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests
from conftest import Server, free_port

from htsgetr.observability import metrics

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

TICKET = "/reads/sample?referenceName=chr1&start={start}&end=90000"


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(url, timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == name and all((k, val) in ls for k, val in labels.items()))


def settled(url: str, name: str, want: float, **labels: str
            ) -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float], int]:
    """Scrape until `name` totals `want` (each worker writes its counts at most
    FLUSH_SECONDS late); returns the samples and how many scrapes it took. Fails if it is not
    there within FLUSH_SECONDS and a margin, or if it ever went past `want`."""
    deadline = time.monotonic() + metrics.FLUSH_SECONDS + 5
    scrapes = 0
    while True:
        samples = scrape(url)
        scrapes += 1
        got = total(samples, name, **labels)
        assert got <= want, (name, got, want)
        if got == want:
            return samples, scrapes
        assert time.monotonic() < deadline, (name, got, want)
        time.sleep(0.1)


def access_pids(output: str, since: int = 0) -> dict[int, int]:
    """Worker pid -> ticket access lines it wrote (JSON logs), from character `since`."""
    pids: dict[int, int] = {}
    for line in output[since:].splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if record.get("logger") == "access" and record.get("path", "").startswith("/reads/"):
            pids[record["pid"]] = pids.get(record["pid"], 0) + 1
    return pids


def hammer(url: str, n: int, threads: int = 8) -> int:
    """`n` ticket GETs from `threads` threads, each on a new connection (so both workers
    accept some); returns how many answered 200."""
    ok = [0] * threads

    def run(t: int) -> None:
        for i in range(t, n, threads):
            for _ in range(5):  # a connection a stopping worker dropped was never answered
                try:
                    resp = requests.get(url + TICKET.format(start=i), timeout=30,
                                        headers={"Connection": "close"})
                    break
                except requests.ConnectionError:
                    time.sleep(0.1)
            ok[t] += resp.status_code == 200

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(ok)


def until_both_served(srv: Server, since: int, sent: int) -> int:
    """Send batches until two workers have written access lines since `since`; returns the
    requests sent in all (`sent` first)."""
    for _ in range(20):
        if len(access_pids(srv.output(), since)) >= 2:
            return sent
        sent += hammer(srv.url, 40)
        time.sleep(0.2)
    raise AssertionError(f"one worker served everything: {access_pids(srv.output(), since)}")


def write_config(d: Path, data_dir: Path, port: int, extra: str = "") -> Path:
    path = d / "metrics.toml"
    path.write_text(f"""
[ticket_server]
port = {port}
workers = 2
graceful_timeout = 5
[[locations]]
root = "{data_dir}"
[logging]
format = "json"
{extra}
""")
    return path


@pytest.fixture()
def served(data_dir: Path, tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    env = {"TMPDIR": str(tmp_path)}  # where the server makes its metrics directory
    srv = Server(["--config", str(write_config(tmp_path, data_dir, port))], port, env=env)
    srv.start()
    yield srv
    srv.stop()


def test_both_workers_counted_and_a_sighup_survived(served: Server, tmp_path: Path) -> None:
    srv = served
    made = [p for p in tmp_path.iterdir() if p.name.startswith("htsgetr-metrics-")]
    assert len(made) == 1 and made[0].is_dir()  # the server's PROMETHEUS_MULTIPROC_DIR
    sent = hammer(srv.url, 200)
    sent = until_both_served(srv, 0, sent)
    samples, scrapes = settled(srv.url + "/metrics", "htsgetr_http_requests_total", sent,
                               endpoint="reads", status="200")
    samples, more_scrapes = settled(srv.url + "/metrics", "htsgetr_tickets_total", sent,
                                    format="BAM")
    scrapes += more_scrapes
    assert total(samples, "htsgetr_http_request_duration_seconds_count", endpoint="reads") \
        == sent
    old_workers = set(access_pids(srv.output()))

    mark = len(srv.output())
    os.kill(srv.proc.pid, signal.SIGHUP)  # a reload: new workers, the same master
    deadline = time.monotonic() + 30
    while True:
        out = srv.output()[mark:]
        exited = sum(f"Worker exiting (pid: {pid})" in out for pid in old_workers)
        if "configuration reloaded" in out and exited == len(old_workers) \
                and out.count("Booting worker") >= 2:
            break
        assert time.monotonic() < deadline, out
        time.sleep(0.1)
    mark = len(srv.output())
    more = until_both_served(srv, mark, hammer(srv.url, 100))
    new_workers = set(access_pids(srv.output(), mark))
    assert len(new_workers) == 2 and not new_workers & old_workers
    time.sleep(metrics.FLUSH_SECONDS + 0.2)  # cache gauges are written once a second
    more = until_both_served(srv, len(srv.output()), more)
    samples, last = settled(srv.url + "/metrics", "htsgetr_http_requests_total", sent + more,
                            endpoint="reads", status="200")
    assert total(samples, "htsgetr_tickets_total", format="BAM") == sent + more
    # every scrape is counted once it is answered (this one not yet): every one before it,
    # once the workers' flushers have run
    time.sleep(2 * metrics.FLUSH_SECONDS + 0.2)
    samples = scrape(srv.url + "/metrics")
    assert total(samples, "htsgetr_http_requests_total", endpoint="metrics") \
        == scrapes + last
    # live gauges sum the live workers' (one parsed index each): the old ones were marked dead
    assert total(samples, "htsgetr_cache_entries", cache="index") == 2
    assert requests.get(srv.url + "/healthz", timeout=10).json() == {"status": "ok"}
    settled(srv.url + "/metrics", "htsgetr_http_requests_total", 1, endpoint="health")

    srv.stop()
    assert not made[0].exists()  # removed when the server stopped


def metrics_server(data_dir: Path, tmp_path: Path) -> tuple[Server, int]:
    """A server whose master answers scrapes on a port of its own. The port is picked free,
    then bound by the master: a test running beside this one may take it in between (the
    master then logs that it cannot listen, and a scrape would reach the other server), so
    the master's own line says it listens, or another port is tried."""
    for _ in range(5):
        port, metrics_port = free_port(), free_port()
        config = write_config(tmp_path, data_dir, port,
                              f"[metrics]\nport = {metrics_port}\nhost = '127.0.0.1'\n")
        srv = Server(["--config", str(config)], port).start()
        deadline = time.monotonic() + 30
        while True:
            out = srv.output()
            if f"metrics at http://127.0.0.1:{metrics_port}/metrics" in out:
                return srv, metrics_port
            if "metrics cannot listen" in out or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        srv.stop()
    raise AssertionError("the master never listened for scrapes on a port of its own")


def test_a_metrics_port_of_its_own(data_dir: Path, tmp_path: Path) -> None:
    srv, metrics_port = metrics_server(data_dir, tmp_path)
    try:
        assert requests.get(srv.url + "/metrics", timeout=10).status_code == 404
        sent = hammer(srv.url, 60)
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        samples, _ = settled(url, "htsgetr_http_requests_total", sent, endpoint="reads",
                             status="200")
        assert total(samples, "htsgetr_http_requests_total", endpoint="metrics") == 0
        mark = len(srv.output())
        os.kill(srv.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "configuration reloaded" not in srv.output()[mark:]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        sent += hammer(srv.url, 20)
        settled(url, "htsgetr_http_requests_total", sent, endpoint="reads")
    finally:
        srv.stop()
