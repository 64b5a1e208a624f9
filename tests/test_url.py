"""HTTP(S) URL backend against real HTTP servers started by the tests: nginx (Debian's, with
a temporary config, non-daemon, free port), a second htsgetr's /data endpoint, and a small
scripted `http.server` upstream (HEAD refused, header recording). Both modes: redirect (ticket
urls are the upstream's) and proxy (ticket urls are our /data under gunicorn).
"""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import unquote

import flask
import pytest
import requests
from conftest import Server, file_records, free_port, reassemble, serve_dir
from test_s3 import (
    CASES,
    AppServer,
    build_remote_data,
    check_payload,
    query_for,
    server_config,
    stop_process,
    verify_ticket,
    wait_port,
)

from htsgetr.config import Config, LocationConfig
from htsgetr.engine import Htsget
from htsgetr.protocol import Endpoint, Format, NotFound, Query, Region, UpstreamError
from htsgetr.storage.base import Storage
from htsgetr.storage.url import UrlStorage

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SECRET = "s3cr3t-token"


# --------------------------------------------------------------------------- nginx


class Nginx:
    """nginx serving `root` at /files/, an index-only tree at /idx/, and at /secret/ the same
    files only to requests carrying `X-Token: SECRET`."""

    def __init__(self, workdir: Path, root: Path, index_root: Optional[Path] = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        conf = workdir / "nginx.conf"
        idx = index_root or root
        conf.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 512; }}
http {{
  access_log {workdir}/access.log;
  client_body_temp_path {workdir}/body;
  proxy_temp_path {workdir}/proxy;
  fastcgi_temp_path {workdir}/fastcgi;
  uwsgi_temp_path {workdir}/uwsgi;
  scgi_temp_path {workdir}/scgi;
  types {{ }}
  default_type application/octet-stream;
  keepalive_requests 10000;
  server {{
    listen 127.0.0.1:{self.port};
    location = / {{ return 200 "ok"; }}
    location /files/ {{ alias {root}/; }}
    location /idx/ {{ alias {idx}/; }}
    location /secret/ {{
      if ($http_x_token != "{SECRET}") {{ return 403; }}
      alias {root}/;
    }}
    location /nohead/ {{
      if ($request_method = HEAD) {{ return 405; }}
      alias {root}/;
    }}
  }}
}}
""")
        self.proc = subprocess.Popen(
            [NGINX, "-c", str(conf), "-p", str(workdir), "-e", str(workdir / "error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_port(self.url + "/", self.proc)

    def access_log(self) -> list[str]:
        path = self.workdir / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def stop(self) -> None:
        stop_process(self.proc)


# --------------------------------------------------------------------------- a scripted upstream


class ToyUpstream:
    """A threaded HTTP/1.1 server with byte ranges and scripted misbehaviour.

    Paths are `/<mode>/<key>`; `mode` picks the behaviour:
    ok, head405, head403 (HEAD refused, GET fine), e401/e403/e404/e500/e503 (every request),
    truncate (headers promise the range, half the body comes, then the connection closes),
    ignore-range (200 with the whole file), gzip (Content-Encoding on ranges), wrong-range
    (206 for another range), cookie (HEAD sets a cookie), flaky (503 twice per key, then
    fine), slow (answers after `slow_seconds`). As a path-style S3 endpoint the bucket is the
    mode; s3denied / s3badkey answer 403 with S3's AccessDenied / InvalidAccessKeyId error
    document.
    """

    def __init__(self, files: dict[str, bytes], slow_seconds: float = 5.0) -> None:
        self.files = files
        self.slow_seconds = slow_seconds
        self.log: list[tuple[str, str, dict[str, str]]] = []
        self.flaky: dict[str, int] = {}
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                upstream.handle(self, head=True)

            def do_GET(self) -> None:  # noqa: N802
                upstream.handle(self, head=False)

        class Quiet(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients (and `truncate`) drop connections on purpose

        self.server = Quiet(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests_for(self, mode: str) -> list[tuple[str, str, dict[str, str]]]:
        return [r for r in self.log if r[1].startswith(f"/{mode}/")]

    def handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        self.log.append((h.command, h.path, dict(h.headers.items())))
        path = unquote(h.path.split("?", 1)[0])
        parts = path.split("/", 2) + ["", ""]
        mode, key = parts[1], parts[2]
        status = {"e401": 401, "e403": 403, "e404": 404, "e500": 500, "e503": 503}.get(mode)
        if mode == "flaky":
            self.flaky[key] = self.flaky.get(key, 0) + 1
            if self.flaky[key] <= 2:
                status = 503
        if (mode == "head405" and head) or (mode == "head403" and head):
            status = 405 if mode == "head405" else 403
        if status is None and key not in self.files:
            status = 404
        if mode in ("s3denied", "s3badkey"):
            code = "AccessDenied" if mode == "s3denied" else "InvalidAccessKeyId"
            doc = f"<Error><Code>{code}</Code><Message>no</Message></Error>".encode()
            h.send_response(403)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", "0" if head else str(len(doc)))
            h.end_headers()
            if not head:
                h.wfile.write(doc)
            return
        if status is not None:
            h.send_response(status)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if mode == "slow":
            time.sleep(self.slow_seconds)
        data = self.files[key]
        etag = '"' + hashlib.md5(data).hexdigest() + '"'
        rng = h.headers.get("Range")
        m = re.match(r"bytes=(\d+)-(\d*)$", rng or "")
        if head or not m or mode == "ignore-range":
            h.send_response(200)
            if mode == "cookie":
                h.send_header("Set-Cookie", "sid=from-upstream; Path=/")
            h.send_header("ETag", etag)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            if not head:
                h.wfile.write(data)
            return
        start = int(m.group(1))
        end = min(int(m.group(2)) + 1 if m.group(2) else len(data), len(data))
        if start >= len(data):
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{len(data)}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        body = data[start:end]
        shown = (start, end)
        if mode == "wrong-range":
            shown = (start + 1, end + 1)
        h.send_response(206)
        h.send_header("ETag", etag)
        h.send_header("Content-Range", f"bytes {shown[0]}-{shown[1] - 1}/{len(data)}")
        if mode == "gzip":
            body = gzip.compress(body)
            h.send_header("Content-Encoding", "gzip")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if mode == "truncate":
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        h.wfile.write(body)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def remote_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = build_remote_data(tmp_path_factory.mktemp("remote"))
    (d / "odd dir").mkdir()
    (d / "odd dir" / "a+b%c.txt").write_bytes(b"odd bytes " * 100)
    return d


@pytest.fixture(scope="module")
def split_data(tmp_path_factory: pytest.TempPathFactory, remote_data: Path) -> tuple[Path, Path]:
    """The same files with indexes moved to a tree of their own."""
    data = tmp_path_factory.mktemp("dataonly")
    idx = tmp_path_factory.mktemp("indexonly")
    for path in remote_data.rglob("*"):
        if path.is_file():
            rel = path.relative_to(remote_data)
            dest = (idx if path.name.endswith((".bai", ".csi", ".tbi", ".crai", ".gzi")) else
                    data) / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, dest)
    return data, idx


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory, remote_data: Path) -> Iterator[Nginx]:
    server = Nginx(tmp_path_factory.mktemp("nginx"), remote_data)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def split_nginx(tmp_path_factory: pytest.TempPathFactory,
                split_data: tuple[Path, Path]) -> Iterator[Nginx]:
    server = Nginx(tmp_path_factory.mktemp("nginx-split"), split_data[0], split_data[1])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def htsgetr_upstream(remote_data: Path) -> Iterator[Server]:
    yield from serve_dir(remote_data)


@pytest.fixture()
def toy(remote_data: Path) -> Iterator[ToyUpstream]:
    files = {p.name: p.read_bytes() for p in remote_data.iterdir() if p.is_file()}
    server = ToyUpstream(files)
    yield server
    server.stop()


def url_location(base: str, **kw: Any) -> LocationConfig:
    return LocationConfig(backend="url", url=base, **kw)


def storage_of(engine: Htsget) -> UrlStorage:
    storage = engine.resolver.rules[0][2]
    assert isinstance(storage, UrlStorage)
    return storage


# --------------------------------------------------------------------------- storage units


def test_storage_basics(nginx: Nginx, remote_data: Path) -> None:
    s = UrlStorage(nginx.url + "/files/")
    raw = (remote_data / "sample.bam").read_bytes()
    assert s.exists("sample.bam") and not s.exists("nope.bam")
    assert s.size("sample.bam") == len(raw)
    assert s.version("sample.bam").startswith('"')  # nginx's ETag
    for a, b in [(0, 18), (5, 1000), (131_000, 132_000), (0, 300_000), (len(raw) - 28, len(raw)),
                 (len(raw) - 10, len(raw) + 100), (len(raw) + 5, len(raw) + 10)]:
        assert s.read("sample.bam", a, b) == raw[a:b], (a, b)
    assert s.read("nested/other.bam", 0, 4) == b"\x1f\x8b\x08\x04"
    odd = (remote_data / "odd dir" / "a+b%c.txt").read_bytes()
    assert s.read("odd dir/a+b%c.txt", 3, 30) == odd[3:30]
    with pytest.raises(NotFound):
        s.size("nope.bam")
    with pytest.raises(NotFound):
        s.read("nope.bam", 0, 10)
    for bad in ("../sample.bam", "/etc/passwd", "a//b", ""):
        assert not s.exists(bad)
    url, headers = s.block_url("odd dir/a+b%c.txt", 3, 30)
    assert url == nginx.url + "/files/odd%20dir/a%2Bb%25c.txt"
    assert requests.get(url, headers=headers, timeout=10).content == odd[3:30]


def test_url_templates() -> None:
    s = UrlStorage("https://h.example/get?file={key}&x=1", "https://i.example/idx")
    assert s.url_for("a/b c.bam") == "https://h.example/get?file=a/b%20c.bam&x=1"
    assert s.url_for("a/b.bam.bai") == "https://i.example/idx/a/b.bam.bai"
    assert s.url_for("a/b.cram.crai") == "https://i.example/idx/a/b.cram.crai"
    assert s.url_for("a/b.bam.md5") == "https://h.example/get?file=a/b.bam.md5&x=1"
    assert UrlStorage("http://h/base").url_for("x.bam") == "http://h/base/x.bam"
    with pytest.raises(ValueError):
        UrlStorage("ftp://h/x")
    with pytest.raises(ValueError):
        UrlStorage("http://h/", mode="presigned")


@pytest.mark.parametrize("mode", ["head405", "head403"])
def test_head_refused_falls_back_to_ranged_get(toy: ToyUpstream, remote_data: Path,
                                               mode: str) -> None:
    s = UrlStorage(f"{toy.url}/{mode}/")
    raw = (remote_data / "sample.bam").read_bytes()
    assert s.size("sample.bam") == len(raw)
    assert s.version("sample.bam") == '"' + hashlib.md5(raw).hexdigest() + f'":{len(raw)}'
    assert not s.exists("nope.bam")
    methods = [(m, h.get("Range")) for m, _, h in toy.requests_for(mode)]
    assert ("HEAD", None) in methods and ("GET", "bytes=0-0") in methods
    assert s.read("sample.bam", 100, 200) == raw[100:200]


def test_nginx_head_refused(nginx: Nginx, remote_data: Path, tmp_path: Path) -> None:
    """A real server refusing HEAD (405): tickets still work from ranged GETs."""
    engine = Htsget(Config(locations=[url_location(nginx.url + "/nohead/")]))
    name, regions = CASES[0]
    query, _ = query_for(name, regions)
    verify_ticket(engine.ticket(query).to_json(), remote_data, name, regions, tmp_path)
    log = nginx.access_log()
    assert any('"HEAD /nohead/sample.bam' in ln and '" 405 ' in ln for ln in log)


def test_upstream_headers_and_forwarding(toy: ToyUpstream) -> None:
    """Static headers go upstream; client headers only when listed; Authorization only with
    forward_authorization; hop-by-hop headers never."""
    app = flask.Flask("t")
    client_headers = {"Authorization": "Bearer client-token", "X-Trace": "abc",
                      "Cookie": "session=1", "X-Other": "no"}
    s = UrlStorage(f"{toy.url}/ok/", headers={"X-Token": SECRET},
                   forward_headers=["X-Trace", "Authorization", "Host", "Cookie"])
    with app.test_request_context("/reads/x", headers=client_headers):
        s.read("sample.bam", 0, 10)
    sent = [h for _, _, h in toy.requests_for("ok")]
    assert sent and all(h.get("X-Token") == SECRET for h in sent)
    assert all(h.get("X-Trace") == "abc" for h in sent)
    assert all(h.get("Cookie") == "session=1" for h in sent)  # listed, so forwarded
    assert not any("Authorization" in h or "X-Other" in h for h in sent)
    assert all(h.get("Host") == f"127.0.0.1:{toy.port}" for h in sent)
    assert all(h.get("Accept-Encoding") == "identity" for h in sent)
    # outside a request nothing is forwarded
    toy.log.clear()
    UrlStorage(f"{toy.url}/ok/", forward_headers=["X-Trace"]).size("calls.vcf.gz")
    assert "X-Trace" not in toy.log[0][2]
    # forward_authorization passes the client's token (and metadata is cached per client)
    toy.log.clear()
    s2 = UrlStorage(f"{toy.url}/ok/", forward_authorization=True, cache_ttl=60)
    for token in ("Bearer a", "Bearer b", "Bearer a"):
        with app.test_request_context("/reads/x", headers={"Authorization": token}):
            s2.size("sample.bam")
    assert [h.get("Authorization") for _, _, h in toy.log] == ["Bearer a", "Bearer b"]


def test_upstream_cookies_are_not_kept(toy: ToyUpstream) -> None:
    """A cookie the upstream sets (perhaps for one client's credentials) is never replayed."""
    s = UrlStorage(f"{toy.url}/cookie/")
    s.size("sample.bam")
    s.read("sample.bam", 0, 10)
    s.size("calls.vcf.gz")
    sent = toy.requests_for("cookie")
    assert len(sent) == 3 and not any("Cookie" in h for _, _, h in sent)


def test_static_headers_never_in_redirect_tickets(nginx: Nginx) -> None:
    engine = Htsget(Config(locations=[url_location(nginx.url + "/secret/",
                                                   headers={"X-Token": SECRET})]))
    ticket = engine.ticket(Query(Endpoint.READS, "sample", Format.BAM)).to_json()
    assert SECRET not in str(ticket)


def test_retries_with_backoff(toy: ToyUpstream, remote_data: Path) -> None:
    s = UrlStorage(f"{toy.url}/flaky/", retries=2)
    assert s.size("sample.bam") == (remote_data / "sample.bam").stat().st_size
    assert len(toy.requests_for("flaky")) == 3
    with pytest.raises(UpstreamError) as info:
        UrlStorage(f"{toy.url}/flaky/", retries=1).size("calls.vcf.gz")
    assert info.value.status == 503


# --------------------------------------------------------------------------- tickets


@pytest.mark.parametrize("name,regions", CASES, ids=[f"{n}-{r}" for n, r in CASES])
def test_redirect_region_tickets_nginx(nginx: Nginx, remote_data: Path, tmp_path: Path,
                                       name: str, regions: Any) -> None:
    if not (remote_data / name).exists():
        pytest.skip(f"{name} not present (../shared/data absent)")
    engine = Htsget(Config(locations=[url_location(nginx.url + "/files/")]))
    query, _ = query_for(name, regions)
    ticket = engine.ticket(query).to_json()
    for block in ticket["htsget"]["urls"]:
        if not block["url"].startswith("data:"):
            assert block["url"] == f"{nginx.url}/files/{name}"
            assert set(block["headers"]) == {"Range"}
    verify_ticket(ticket, remote_data, name, regions, tmp_path)


@pytest.mark.parametrize("name,regions", [CASES[0], CASES[2], CASES[6], CASES[8]])
def test_redirect_tickets_from_htsgetr_data(htsgetr_upstream: Server, remote_data: Path,
                                            tmp_path: Path, name: str, regions: Any) -> None:
    """Another htsgetr's /data endpoint as the upstream."""
    engine = Htsget(Config(locations=[url_location(htsgetr_upstream.url + "/data/")]))
    query, _ = query_for(name, regions)
    verify_ticket(engine.ticket(query).to_json(), remote_data, name, regions, tmp_path)


def test_index_url(split_nginx: Nginx, remote_data: Path, tmp_path: Path) -> None:
    """Indexes from their own url pattern."""
    base = split_nginx.url
    engine = Htsget(Config(locations=[url_location(base + "/files/",
                                                   index_url=base + "/idx/{key}")]))
    for name, regions in [CASES[0], CASES[7]]:
        query, _ = query_for(name, regions)
        verify_ticket(engine.ticket(query).to_json(), remote_data, name, regions, tmp_path)
    log = split_nginx.access_log()
    assert any("/idx/sample.bam.bai" in ln and '" 200 ' in ln for ln in log)
    assert not any("/files/sample.bam.bai" in ln for ln in log)
    without = Htsget(Config(locations=[url_location(base + "/files/")]))
    with pytest.raises(NotFound):
        without.ticket(query_for(*CASES[0])[0])


def test_url_tickets_equal_local_tickets(nginx: Nginx, remote_data: Path) -> None:
    local = Htsget(Config(locations=[LocationConfig(root=str(remote_data))]))
    remote = Htsget(Config(locations=[url_location(nginx.url + "/files/")]))
    for name, regions in CASES[:8]:
        query, _ = query_for(name, regions)
        a = local.ticket(query).to_json()["htsget"]
        b = remote.ticket(query).to_json()["htsget"]
        assert [x.get("headers") for x in a["urls"]] == [x.get("headers") for x in b["urls"]]


def test_warm_ticket_makes_no_upstream_call(nginx: Nginx) -> None:
    engine = Htsget(Config(locations=[url_location(nginx.url + "/files/", cache_ttl=60)]))
    storage = storage_of(engine)
    query = Query(Endpoint.READS, "sample", Format.BAM, regions=(Region("chr1", 1000, 50000),))
    t0 = time.perf_counter()
    cold = engine.ticket(query).to_json()
    cold_ms = (time.perf_counter() - t0) * 1000
    cold_calls = storage.calls
    warm_ms = []
    for _ in range(5):
        t0 = time.perf_counter()
        assert engine.ticket(query).to_json() == cold
        warm_ms.append((time.perf_counter() - t0) * 1000)
    assert storage.calls == cold_calls
    print(f"\nURL ticket (nginx): cold {cold_ms:.1f} ms ({cold_calls} requests), "
          f"warm {min(warm_ms):.2f}-{max(warm_ms):.2f} ms (0 requests)")


def test_proxy_mode_under_gunicorn(nginx: Nginx, remote_data: Path, tmp_path: Path) -> None:
    """Proxy mode: the upstream needs a secret header; clients only see our /data."""
    port = free_port()
    loc = url_location(nginx.url + "/secret/", mode="proxy", headers={"X-Token": SECRET},
                       cache_ttl=30)
    server = AppServer(tmp_path, server_config(port, loc), port, workers=2).start()
    try:
        assert requests.get(f"{nginx.url}/secret/sample.bam", timeout=5).status_code == 403
        for name, regions in [CASES[0], CASES[3], CASES[7], CASES[10], CASES[14], CASES[18]]:
            if not (remote_data / name).exists():
                continue
            query, _ = query_for(name, regions)
            params: dict[str, Any] = {"format": query.format.value}
            if regions:
                params.update(referenceName=regions[0][0])
                if regions[0][1] is not None:
                    params.update(start=regions[0][1], end=regions[0][2])
            resp = requests.get(f"{server.url}/{query.endpoint.value}/{query.id}",
                                params=params, timeout=30)
            assert resp.status_code == 200, resp.text
            ticket = resp.json()
            assert SECRET not in resp.text
            for block in ticket["htsget"]["urls"]:
                if not block["url"].startswith("data:"):
                    assert block["url"].startswith(f"{server.url}/data/")
            verify_ticket(ticket, remote_data, name, regions, tmp_path)
        raw = (remote_data / "calls.vcf.gz").read_bytes()
        resp = requests.get(f"{server.url}/data/calls.vcf.gz",
                            headers={"Range": "bytes=100-"}, timeout=10)
        assert resp.status_code == 206 and resp.content == raw[100:]
        assert "Content-Encoding" not in resp.headers
        whole = requests.get(f"{server.url}/data/calls.vcf.gz", timeout=10)
        assert whole.status_code == 200 and whole.content == raw
        assert requests.get(f"{server.url}/data/nope.bam", timeout=10).status_code == 404
    finally:
        server.stop()


def test_proxy_whole_file_reassembles(nginx: Nginx, remote_data: Path, tmp_path: Path) -> None:
    port = free_port()
    loc = url_location(nginx.url + "/files/", mode="proxy")
    server = AppServer(tmp_path, server_config(port, loc), port, workers=1).start()
    try:
        resp = requests.get(f"{server.url}/reads/nested/other", timeout=30)
        assert resp.status_code == 200, resp.text
        payload = reassemble(resp.json())
        check_payload(payload, tmp_path, ".bam", file_records(remote_data / "nested" / "other.bam"))
        assert payload == (remote_data / "nested" / "other.bam").read_bytes()
    finally:
        server.stop()



def test_serve_storage_url(nginx: Nginx, remote_data: Path, tmp_path: Path) -> None:
    """`htsgetr serve --storage http://host/path` maps ID x to http://host/path/x.bam."""
    port = free_port()
    server = Server(["--storage", f"{nginx.url}/files", "--port", str(port)], port)
    server.start()
    try:
        resp = requests.get(f"{server.url}/reads/nested/other",
                            params={"referenceName": "chr2", "start": "100", "end": "80000"},
                            timeout=30)
        assert resp.status_code == 200, resp.text
        ticket = resp.json()
        assert any(b["url"] == f"{nginx.url}/files/nested/other.bam"
                   for b in ticket["htsget"]["urls"])
        verify_ticket(ticket, remote_data, "nested/other.bam", [("chr2", 100, 80_000)], tmp_path)
        assert requests.get(f"{server.url}/reads/nope", timeout=30).status_code == 404
    finally:
        server.stop()


def test_session_is_per_process(nginx: Nginx) -> None:
    """After a fork (gunicorn --preload) the child builds its own session: no shared sockets."""
    import multiprocessing

    s = UrlStorage(nginx.url + "/files/")
    assert isinstance(s, Storage)
    parent = s.session
    assert s.size("calls.vcf.gz") > 0
    ctx = multiprocessing.get_context("fork")
    queue: Any = ctx.Queue()

    def child() -> None:
        queue.put((id(s.session) != id(parent), s.size("calls.vcf.gz")))

    proc = ctx.Process(target=child)
    proc.start()
    proc.join(30)
    fresh, size = queue.get(timeout=5)
    assert fresh and size == s.size("calls.vcf.gz")
    assert s.session is parent
