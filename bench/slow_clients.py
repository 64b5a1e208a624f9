"""Slow clients against `htsgetr serve`: latency of normal requests while N connections
trickle their headers (slowloris) and N trickle their POST bodies, per worker class.

    python bench/slow_clients.py [--connections 500] [--duration 15] [--classes gthread,gevent]

For each worker class: start `htsgetr serve` on a generated BAM, measure ticket and /data
latency quietly, then with the attack running (every attacker connection that the server
cuts reconnects at once, so the pressure stays at N + N), and print p50 / p99 / max and
the requests that failed or took longer than 10 s. `make bench` runs it with defaults.
The attacker runs in its own process, so its work does not slow the measuring client.
"""

from __future__ import annotations

import argparse
import errno
import multiprocessing
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import requests

ROOT = Path(__file__).resolve().parent.parent

#: worker setups compared: name -> `--set` options of `htsgetr serve` (2 workers each)
SETUPS: dict[str, list[str]] = {
    # the default before: 4 threads per worker
    "gthread": ["ticket_server.worker_class='gthread'", "ticket_server.threads=4"],
    # as many threads as the attack has connections
    "gthread-512": ["ticket_server.worker_class='gthread'", "ticket_server.threads=512"],
    # the default now
    "gevent": ["ticket_server.worker_class='gevent'"],
}


# --------------------------------------------------------------------------- data


def make_data(out: Path) -> Path:
    """A small sorted, indexed BAM (`sample`), enough for region tickets and /data ranges."""
    import pysam

    bam = out / "sample.bam"
    if (out / "sample.bam.bai").exists():
        return bam
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(5)
    header = {"HD": {"VN": "1.6", "SO": "coordinate"},
              "SQ": [{"SN": "chr1", "LN": 1_000_000}, {"SN": "chr2", "LN": 500_000}]}
    tmp = out / "unsorted.bam"
    with pysam.AlignmentFile(str(tmp), "wb", header=header) as f:
        for i in range(20_000):
            a = pysam.AlignedSegment(f.header)
            a.query_name = f"r{i}"
            a.reference_id = rng.randrange(2)
            a.reference_start = rng.randrange(400_000)
            a.query_sequence = "".join(rng.choice("ACGT") for _ in range(100))
            a.query_qualities = pysam.qualitystring_to_array("I" * 100)
            a.cigarstring = "100M"
            f.write(a)
    pysam.sort("-o", str(bam), str(tmp))
    tmp.unlink()
    pysam.index(str(bam))
    return bam


# --------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data: Path, port: int, sets: list[str], workers: int = 2) -> subprocess.Popen:
    args = [sys.executable, "-m", "htsgetr", "serve", "--data-dir", str(data),
            "--port", str(port), "--workers", str(workers)]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, cwd=str(ROOT))
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"htsgetr serve exited with {proc.returncode}: {args}")
        try:
            requests.get(f"http://127.0.0.1:{port}/service-info", timeout=1)
            return proc
        except requests.RequestException:
            time.sleep(0.1)
    stop_server(proc)
    raise RuntimeError("htsgetr serve did not start")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --------------------------------------------------------------------------- attackers

HEADER_HEAD = b"GET /reads/sample?referenceName=chr1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
BODY_HEAD = (b"POST /reads/sample HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
             b"Content-Length: 100000\r\n\r\n")


@dataclass
class _Conn:
    sock: Optional[socket.socket] = None
    sent: int = 0


def _attack(host: str, port: int, headers: int, bodies: int, interval: float,
            stop: Any, counts: Any, liar: bool = False) -> None:
    """Hold `headers` + `bodies` connections, each sending one more byte every `interval`
    seconds (`liar`: body connections send a few bytes, then nothing). A connection the
    server closes (or answers) is counted in counts[0] and replaced at once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conns = [_Conn() for _ in range(headers + bodies)]

    def payload(i: int, c: _Conn) -> bytes:
        if i < headers:  # the request line and a header, then never-ending header lines
            if c.sent < len(HEADER_HEAD):
                return HEADER_HEAD[c.sent:c.sent + 1]
            return b"X-Slow: " if c.sent % 10 == 0 else b"a"
        if c.sent == 0:
            return BODY_HEAD + b"{"  # whole headers at once: the body is what trickles
        if liar and c.sent > len(BODY_HEAD) + 8:
            return b""
        return b" "  # JSON whitespace, forever under the promised length

    next_round = time.monotonic()
    while not stop.is_set():
        for i, c in enumerate(conns):
            if c.sock is None:
                s = socket.socket()
                s.setblocking(False)
                err = s.connect_ex((host, port))
                if err not in (0, errno.EINPROGRESS):
                    s.close()
                    continue
                c.sock, c.sent = s, 0
                continue
            try:
                data = c.sock.recv(4096)
                closed = True  # the server answered or closed: either way this one is done
                del data
            except BlockingIOError:
                closed = False
            except OSError:
                closed = True
            if not closed:
                chunk = payload(i, c)
                if chunk:
                    try:
                        c.sent += c.sock.send(chunk)
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed = True
            if closed:
                c.sock.close()
                c.sock = None
                with counts.get_lock():
                    counts[0] += 1
        next_round += interval
        time.sleep(max(0.0, next_round - time.monotonic()))
    for c in conns:
        if c.sock is not None:
            c.sock.close()


class Attack:
    """The attacker in a child process: `with Attack(...) as a: ...; a.cut` = connections
    the server closed so far."""

    def __init__(self, port: int, headers: int, bodies: int, interval: float = 1.0,
                 liar: bool = False, host: str = "127.0.0.1") -> None:
        ctx = multiprocessing.get_context("fork")
        self.stop = ctx.Event()
        self.counts = ctx.Array("l", [0])
        self.proc = ctx.Process(target=_attack, daemon=True, args=(
            host, port, headers, bodies, interval, self.stop, self.counts, liar))

    @property
    def cut(self) -> int:
        return int(self.counts[0])

    def __enter__(self) -> Attack:
        self.proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


# --------------------------------------------------------------------------- measuring


@dataclass
class Latencies:
    times: list[float] = field(default_factory=list)
    failed: int = 0

    def row(self) -> str:
        if not self.times:
            return f"no answer within 10 s (failed={self.failed})"
        t = sorted(self.times)
        p99 = t[min(len(t) - 1, int(round(0.99 * (len(t) - 1))))]
        return (f"p50 {statistics.median(t) * 1e3:7.1f} ms  p99 {p99 * 1e3:7.1f} ms  "
                f"max {t[-1] * 1e3:7.1f} ms  n={len(t)} failed/slow>10s={self.failed}")


def targets(base: str) -> tuple[str, dict[str, Any]]:
    """A region ticket url and the first /data block of its ticket (fetched quietly)."""
    ticket_url = f"{base}/reads/sample?referenceName=chr1&start=100000&end=120000"
    block = next(u for u in requests.get(ticket_url, timeout=30).json()["htsget"]["urls"]
                 if u["url"].startswith("http"))
    return ticket_url, block


def measure(base: str, seconds: float) -> tuple[Latencies, Latencies]:
    """Ticket and /data latency, each request on a new connection (as a new client would)."""
    ticket_url, block = targets(base)
    return measure_urls(ticket_url, block, seconds)


def measure_urls(ticket_url: str, block: dict[str, Any],
                 seconds: float) -> tuple[Latencies, Latencies]:
    tickets, data = Latencies(), Latencies()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for lat, url, hdr in ((tickets, ticket_url, {}),
                              (data, block["url"], block.get("headers", {}))):
            t0 = time.perf_counter()
            try:
                r = requests.get(url, headers=hdr, timeout=10)
                r.raise_for_status()
                lat.times.append(time.perf_counter() - t0)
            except requests.RequestException:
                lat.failed += 1
    return tickets, data


def run_setup(name: str, data: Path, n: int, seconds: float, interval: float) -> None:
    port = free_port()
    proc = start_server(data, port, SETUPS[name])
    base = f"http://127.0.0.1:{port}"
    try:
        ticket_url, block = targets(base)
        quiet_t, quiet_d = measure_urls(ticket_url, block, 2)
        with Attack(port, n, n, interval) as attack:
            time.sleep(3)  # let every attacker connect and start trickling
            t, d = measure_urls(ticket_url, block, seconds)
            cut = attack.cut
        print(f"{name}  ({n} slowloris + {n} slow bodies, one byte per {interval:g} s each)")
        print(f"  quiet    ticket {quiet_t.row()}")
        print(f"           /data  {quiet_d.row()}")
        print(f"  attacked ticket {t.row()}")
        print(f"           /data  {d.row()}")
        print(f"  attacker connections the server cut meanwhile: {cut}", flush=True)
    finally:
        stop_server(proc)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=500, help="slowloris and slow bodies each")
    p.add_argument("--duration", type=float, default=15.0, help="seconds measured under attack")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between two bytes")
    p.add_argument("--classes", default=",".join(SETUPS), help="comma-separated, of: "
                   + ", ".join(SETUPS))
    args = p.parse_args(argv)
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * args.connections + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    cache = ROOT / "build" / "bench-data" / "slow"
    data = make_data(cache).parent
    with tempfile.TemporaryDirectory():
        for name in args.classes.split(","):
            run_setup(name.strip(), data, args.connections, args.duration, args.interval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
