"""Slow or stalled clients cannot deny service (issue 9), on a real `htsgetr serve`.

With gevent workers (the default), normal ticket and /data requests answer while 500
connections trickle their headers or bodies; every kind of stall is cut within its deadline:
a request head (slowloris), a body that never comes (Content-Length liar, 408), an idle
connection, an idle kept-alive connection, a TLS handshake that never starts. The body
deadline holds under gthread workers too. Timing of normal requests is never asserted, only
that they are answered at all (well inside 10 s) while the attack goes on.
"""

from __future__ import annotations

import concurrent.futures
import resource
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests
from conftest import ROOT, Server, free_port, make_bam

sys.path.insert(0, str(ROOT / "bench"))
from slow_clients import Attack  # noqa: E402

HEADER_T, BODY_T, KEEPALIVE = 2, 2, 2
SLACK = 4.0  # seconds past a deadline that a loaded test machine may need to act on it

LIAR = (b"POST /reads/sample HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{\"format\": ")


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("slow")
    make_bam(d / "sample.bam", n_reads=2000)
    return d


def serve(directory: Path, *sets: str, tls: tuple[Path, Path] | None = None) -> Server:
    port = free_port()
    args = ["--data-dir", str(directory), "--port", str(port), "--workers", "2",
            "--set", f"ticket_server.header_timeout={HEADER_T}",
            "--set", f"ticket_server.body_timeout={BODY_T}",
            "--set", f"ticket_server.keepalive={KEEPALIVE}"]
    for s in sets:
        args += ["--set", s]
    if tls:
        args += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    srv = Server(args, port, scheme="https" if tls else "http")
    # drain its log: an attack logs a line per cut connection, and a full pipe would stall it
    threading.Thread(target=_drain, args=(srv,), daemon=True).start()
    return srv.start(verify=str(tls[0])) if tls else srv.start()


def _drain(srv: Server) -> None:
    assert srv.proc.stdout is not None
    while srv.proc.stdout.read(65536):
        pass


@pytest.fixture(scope="module")
def gevent_server(small_dir: Path) -> Iterator[Server]:
    srv = serve(small_dir)  # the default worker class
    yield srv
    srv.stop()


def targets(srv: Server) -> tuple[str, dict]:
    url = f"{srv.url}/reads/sample?referenceName=chr1&start=1000&end=60000"
    ticket = requests.get(url, timeout=10).json()
    block = next(b for b in ticket["htsget"]["urls"] if b["url"].startswith("http"))
    return url, block


def test_normal_requests_answer_while_500_connections_trickle(gevent_server: Server) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1200, hard), hard))
    url, block = targets(gevent_server)
    worst, answered = 0.0, 0
    with Attack(gevent_server.port, headers=300, bodies=200, interval=0.5) as attack:
        time.sleep(1.0)  # every attacker connected and trickling
        deadline = time.monotonic() + 30
        # until every attacker connection was cut at least once on average (the header and
        # body deadlines at work), and for at least 3 s of normal traffic
        start = time.monotonic()
        while time.monotonic() < deadline and (attack.cut < 500 or time.monotonic() - start < 3):
            t0 = time.monotonic()
            r = requests.get(url, timeout=10)
            assert r.status_code == 200, r.text
            d = requests.get(block["url"], headers=block.get("headers", {}), timeout=10)
            assert d.status_code in (200, 206)
            assert d.content
            worst = max(worst, time.monotonic() - t0)
            answered += 1
        cut = attack.cut
    assert answered >= 3
    assert worst < 10, f"a normal ticket + /data pair took {worst:.1f} s under attack"
    assert cut >= 500, f"only {cut} trickling connections were cut by the deadlines"


def _read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed."""
    t0 = time.monotonic()
    sock.settimeout(limit)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    return data, time.monotonic() - t0


def _liar(port: int) -> tuple[bytes, float]:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(LIAR)
        return _read_until_closed(s, BODY_T + SLACK + 5)


def _slowloris(port: int) -> tuple[bytes, float]:
    """One header byte every 0.25 s, never a blank line."""
    head = b"GET /reads/sample HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: " + b"a" * 10_000
    with socket.create_connection(("127.0.0.1", port)) as s:
        t0 = time.monotonic()
        s.settimeout(0.25)
        for byte in head:
            try:
                s.send(bytes([byte]))
                if s.recv(65536) == b"":
                    break
            except (socket.timeout, BlockingIOError):
                continue
            except OSError:
                break
            if time.monotonic() - t0 > HEADER_T + SLACK + 5:
                break
        return b"", time.monotonic() - t0


def _idle(port: int) -> tuple[bytes, float]:
    with socket.create_connection(("127.0.0.1", port)) as s:
        return _read_until_closed(s, HEADER_T + SLACK + 5)


def _idle_keepalive(port: int) -> tuple[bytes, float]:
    """One whole request answered on a kept-alive connection, then silence."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /service-info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        s.settimeout(5)
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(65536)
        assert head.startswith(b"HTTP/1.1 200"), head[:100]
        _, elapsed = _read_until_closed(s, KEEPALIVE + SLACK + 5)
        return head, elapsed


STALLS: dict[str, tuple[Callable[[int], tuple[bytes, float]], float]] = {
    "content-length liar": (_liar, BODY_T),
    "slowloris headers": (_slowloris, HEADER_T),
    "idle connection": (_idle, HEADER_T),
    "idle kept-alive connection": (_idle_keepalive, KEEPALIVE),
}


def test_every_stall_is_cut_within_its_deadline(gevent_server: Server) -> None:
    with concurrent.futures.ThreadPoolExecutor(len(STALLS)) as pool:
        futures = {name: pool.submit(fn, gevent_server.port) for name, (fn, _) in STALLS.items()}
        results = {name: f.result() for name, f in futures.items()}
    for name, (_, elapsed) in results.items():
        limit = STALLS[name][1]
        assert elapsed < limit + SLACK, f"{name}: still open after {elapsed:.1f} s"
        assert elapsed > limit - 0.5, f"{name}: cut after {elapsed:.1f} s, before its deadline"
    body, _ = results["content-length liar"]
    assert body.startswith(b"HTTP/1.1 408"), body[:200]
    assert b'"error"' in body and b"did not arrive within" in body
    assert results["slowloris headers"][0] == b"" and results["idle connection"][0] == b""


def test_gthread_workers_cut_a_stalled_body_too(small_dir: Path) -> None:
    srv = serve(small_dir, "ticket_server.worker_class='gthread'")
    try:
        url, _ = targets(srv)
        assert requests.get(url, timeout=10).status_code == 200
        body, elapsed = _liar(srv.port)
        assert body.startswith(b"HTTP/1.1 408"), body[:200]
        assert BODY_T - 0.5 < elapsed < BODY_T + SLACK
        # a POST whose body arrives in time is untouched by the deadline
        r = requests.post(url.split("?")[0], json={"format": "BAM"}, timeout=10)
        assert r.status_code == 200, r.text
    finally:
        srv.stop()


def test_tls_handshake_has_the_header_deadline(small_dir: Path, cert: tuple[Path, Path]) -> None:
    srv = serve(small_dir, tls=cert)
    try:
        with socket.create_connection(("127.0.0.1", srv.port)) as s:  # never says hello
            _, elapsed = _read_until_closed(s, HEADER_T + SLACK + 5)
        assert HEADER_T - 0.5 < elapsed < HEADER_T + SLACK
        r = requests.get(f"{srv.url}/reads/sample", verify=str(cert[0]), timeout=10)
        assert r.status_code == 200
        block = next(b for b in r.json()["htsget"]["urls"] if b["url"].startswith("https"))
        data = requests.get(block["url"], headers=block.get("headers", {}),
                            verify=str(cert[0]), timeout=10)
        assert data.status_code in (200, 206) and data.content
        ctx = ssl.create_default_context(cafile=str(cert[0]))
        with socket.create_connection(("127.0.0.1", srv.port)) as raw:  # a TLS liar
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(LIAR)
                body, elapsed = _read_until_closed(s, BODY_T + SLACK + 5)
        assert body.startswith(b"HTTP/1.1 408"), body[:200]
    finally:
        srv.stop()


def test_urllib3_imported_before_gevent_patches_ssl_still_works() -> None:
    """gevent patches `ssl` in each worker after the master imported gunicorn (and maybe
    urllib3, for boto3 or requests): without the repair, TLS from those recurses forever."""
    code = (
        "import urllib3.util.ssl_ as u\n"
        "from gevent import monkey; monkey.patch_all()\n"
        "from htsgetr.workers import repair_ssl_names\n"
        "repair_ssl_names()\n"
        "u.create_urllib3_context()\n"
        "import requests, boto3\n"
        "requests.Session().get_adapter('https://x').init_poolmanager(1, 1)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                         text=True, cwd=str(ROOT), timeout=60)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
