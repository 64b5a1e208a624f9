"""What gunicorn itself answers, before the app sees a request (issue 9): malformed request
lines, NUL bytes, over-long lines and too many headers are refused in htsget JSON, not
gunicorn's HTML page, under every worker class; and `gunicorn -c python:htsgetr.gunicorn_conf
htsgetr.wsgi:app` runs the same deadline-bearing gevent workers as `htsgetr serve`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests
from conftest import ROOT, Server, free_port, make_bam, wait_for

from htsgetr.protocol import CONTENT_TYPE

SECRET = "s3cr3t-t0ken-value"

#: raw requests gunicorn refuses, and the status it must give
MALFORMED: dict[str, tuple[bytes, int]] = {
    "NUL in the target": (b"GET /reads/a\x00b HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    "not HTTP": (b"HELLO\r\n\r\n", 400),
    "bad version": (b"GET /reads/x HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n", 400),
    "space in header name": (b"GET /reads/x HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Name: v\r\n\r\n",
                             400),
    "line past limit_request_line": (
        b"GET /reads/x?sig=" + SECRET.encode() + b"&pad=" + b"a" * 9000
        + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414),
    "too many headers": (
        b"GET /reads/x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(150)) + b"\r\n", 431),
    "header line without colon, holding a token": (
        b"GET /reads/x HTTP/1.1\r\nHost: 127.0.0.1\r\nBearer " + SECRET.encode() + b"\r\n\r\n",
        400),
}


def raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


def assert_refusals_are_htsget_json(port: int) -> None:
    for name, (request, status) in MALFORMED.items():
        got, headers, body = raw(port, request)
        assert got == status, (name, got, body[:200])
        assert headers["content-type"] == CONTENT_TYPE, (name, headers)
        error = json.loads(body)["htsget"]
        assert error["error"] == "InvalidInput" and error["message"], (name, error)
        assert SECRET.encode() not in body, name


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("edges")
    make_bam(d / "sample.bam", n_reads=500)
    return d


@pytest.mark.parametrize("worker_class", ["gevent", "gthread", "sync"])
def test_gunicorn_refusals_are_htsget_json(small_dir: Path, worker_class: str) -> None:
    port = free_port()
    srv = Server(["--data-dir", str(small_dir), "--port", str(port),
                  "--set", f"ticket_server.worker_class='{worker_class}'"], port).start()
    try:
        assert_refusals_are_htsget_json(port)
        # the server is unharmed and still answers normal requests
        r = requests.get(f"{srv.url}/reads/sample?referenceName=chr1", timeout=10)
        assert r.status_code == 200, r.text
    finally:
        log = srv.stop()
    assert SECRET not in log


@pytest.fixture(scope="module")
def plain_gunicorn(small_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`gunicorn -c python:htsgetr.gunicorn_conf htsgetr.wsgi:app`, configured only by
    HTSGET_CONFIG (its port, its location, its deadlines)."""
    port = free_port()
    conf = tmp_path_factory.mktemp("gconf") / "htsgetr.toml"
    conf.write_text(
        f'[ticket_server]\nhost = "127.0.0.1"\nport = {port}\nworkers = 1\n'
        "header_timeout = 2\nbody_timeout = 2\n\n"
        f'[[locations]]\nregex = "(.*)"\nroot = "{small_dir}"\n'
    )
    env = {**os.environ, "HTSGET_CONFIG": str(conf)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:htsgetr.gunicorn_conf",
         "htsgetr.wsgi:app"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/service-info", proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(15)


def test_plain_gunicorn_takes_the_config_port_and_locations(plain_gunicorn: int) -> None:
    r = requests.get(f"http://127.0.0.1:{plain_gunicorn}/reads/sample", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["htsget"]["format"] == "BAM"


def test_plain_gunicorn_refusals_are_htsget_json(plain_gunicorn: int) -> None:
    assert_refusals_are_htsget_json(plain_gunicorn)


def test_plain_gunicorn_has_the_deadlines(plain_gunicorn: int) -> None:
    # headers trickled one byte at a time: cut at header_timeout (2 s), not held forever
    with socket.create_connection(("127.0.0.1", plain_gunicorn)) as s:
        t0 = time.monotonic()
        s.settimeout(0.2)
        closed = False
        for byte in b"GET /reads/sample HTTP/1.1\r\nX-Slow: " + b"a" * 200:
            try:
                s.send(bytes([byte]))
                if s.recv(1) == b"":
                    closed = True
                    break
            except socket.timeout:
                continue
            except OSError:
                closed = True
                break
        elapsed = time.monotonic() - t0
    assert closed and elapsed < 2 + 5, f"slow headers still open after {elapsed:.1f} s"
    # a body that never comes: 408 after body_timeout
    liar = (b"POST /reads/sample HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
            b"\r\nContent-Length: 100\r\n\r\n{")
    t0 = time.monotonic()
    status, _, body = raw(plain_gunicorn, liar)
    assert status == 408, body[:200]
    assert 1.5 < time.monotonic() - t0 < 2 + 5


def test_sendfile_bytes_are_counted_in_the_access_line(small_dir: Path) -> None:
    """/data ranges go out with sendfile(2), which gunicorn 27 does not count: the access
    line (and the bytes metric) would say 0."""
    port = free_port()
    srv = Server(["--data-dir", str(small_dir), "--port", str(port),
                  "--set", "logging.format='json'"], port).start()
    try:
        ticket = requests.get(f"{srv.url}/reads/sample?referenceName=chr1", timeout=10).json()
        block = next(b for b in ticket["htsget"]["urls"] if b["url"].startswith("http"))
        first, last = (int(x) for x in block["headers"]["Range"].split("=")[1].split("-"))
        r = requests.get(block["url"], headers=block["headers"], timeout=10)
        assert r.status_code == 206 and len(r.content) == last - first + 1
        whole = requests.get(f"{srv.url}/data/sample.bam", timeout=10)
        assert whole.status_code == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lines = [json.loads(ln) for ln in srv.output().splitlines()
                     if ln.startswith("{") and '"/data/sample.bam' in ln]
            if len(lines) >= 2:
                break
            time.sleep(0.1)
    finally:
        srv.stop()
    sent = sorted(line["bytes"] for line in lines)
    assert sent == sorted([last - first + 1, (small_dir / "sample.bam").stat().st_size]), lines
