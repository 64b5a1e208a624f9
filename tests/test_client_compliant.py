"""htsgetr.client and `htsgetr fetch` against a minimal spec-compliant htsget server of the
tests' own (http.server in a thread, no htsgetr HTTP code): tickets with absolute and
`data:` urls, a redirecting block, a block that fails twice with 503 before it answers,
a block whose Content-Length lies, a bearer token. The blocks' byte ranges come from the
engine (so the records are right); everything HTTP is this file's. Records are compared
with htslib's for the same regions; a failed download leaves no file behind.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import parse_qsl, urlsplit

import pytest
from conftest import assert_ticket_records

from htsgetr import Htsget
from htsgetr.client import ClientError, InvalidRequest, fetch, iter_blocks, request_ticket
from htsgetr.protocol import Endpoint, HtsgetError, parse_get, parse_post

TOKEN = "s3cr3t-token"
#: how each non-inline block of a ticket is served, in turn
MODES = ("plain", "redirect", "flaky", "other", "away")


class Mini:
    """A compliant ticket + data server. `lie` makes every block's Content-Length 100
    bytes larger than what is sent (the connection is closed after the short body)."""

    def __init__(self, data_dir: Path, token: Optional[str] = None) -> None:
        self.engine = Htsget.from_data_dir(data_dir, base_url="http://engine.invalid")
        self.data_dir = data_dir
        self.token = token
        self.lie = False
        self.short = False  # an honest Content-Length, 10 bytes short of the Range
        self.delay = 0.0
        self.log: list[tuple[str, str, dict[str, str]]] = []
        self.failures: Counter[str] = Counter()
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.other: Optional[ThreadingHTTPServer] = None  # a second origin (redirect target)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    # ------------------------------------------------------------------ ticket

    def ticket(self, endpoint: str, id: str, query: str, body: Optional[bytes]) -> dict[str, Any]:
        ep = Endpoint(endpoint)
        if body is None:
            q = parse_get(ep, id, dict(parse_qsl(query)))
        else:
            q = parse_post(ep, id, body, bool(query))
        doc = self.engine.ticket(q).to_json()
        urls, n = [], 0
        for block in doc["htsget"]["urls"]:
            if block["url"].startswith("data:"):
                urls.append(block)
                continue
            # each range cut in up to four blocks (a server may cut as it likes), served
            # in turn plainly, through a redirect, after two 503s, from another origin, and
            # through a redirect to another origin
            key = block["url"].split("/data/", 1)[1]
            first, last = (int(x) for x in block["headers"]["Range"][6:].split("-"))
            step = max(1, (last + 1 - first + 3) // 4)
            for beg in range(first, last + 1, step):
                mode = MODES[n % len(MODES)]
                n += 1
                base = self.other_url if mode == "other" else self.url
                end = min(last, beg + step - 1)
                urls.append({"url": f"{base}/blob/{mode}/{key}",
                             "headers": {"Range": f"bytes={beg}-{end}"},
                             **({"class": block["class"]} if "class" in block else {})})
        doc["htsget"]["urls"] = urls
        return doc

    @property
    def other_url(self) -> str:
        assert self.other is not None
        return f"http://127.0.0.1:{self.other.server_address[1]}"

    # ------------------------------------------------------------------ HTTP

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        mini = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _json(self, status: int, doc: dict[str, Any]) -> None:
                payload = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.ga4gh.htsget.v1.3.0+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _ticket(self, body: Optional[bytes]) -> None:
                parts = urlsplit(self.path)
                endpoint, _, id = parts.path.lstrip("/").partition("/")
                if mini.token and self.headers.get("Authorization") != f"Bearer {mini.token}":
                    return self._json(401, {"htsget": {"error": "InvalidAuthentication",
                                                       "message": "bearer token required"}})
                try:
                    self._json(200, mini.ticket(endpoint, id, parts.query, body))
                except HtsgetError as err:
                    self._json(err.status, err.to_json())

            def do_POST(self) -> None:  # noqa: N802
                mini.log.append(("POST", self.path, dict(self.headers)))
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._ticket(body)

            def do_GET(self) -> None:  # noqa: N802
                mini.log.append(("GET", self.path, dict(self.headers)))
                if not self.path.startswith("/blob/"):
                    return self._ticket(None)
                with mini.lock:  # every block request counts, redirects and 503s too
                    mini.in_flight += 1
                    mini.max_in_flight = max(mini.max_in_flight, mini.in_flight)
                try:
                    time.sleep(mini.delay)
                    self._blob()
                finally:
                    with mini.lock:
                        mini.in_flight -= 1

            def _blob(self) -> None:
                _, _, mode, key = self.path.split("/", 3)
                rng = self.headers.get("Range", "")
                if mode in ("redirect", "away"):
                    self.send_response(302 if mode == "redirect" else 307)
                    where = mini.other_url if mode == "away" else ""
                    self.send_header("Location", f"{where}/blob/plain/{key}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if mode == "flaky" and mini.failures[self.path + rng] < 2:
                    mini.failures[self.path + rng] += 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if not rng.startswith("bytes="):  # the block's headers must arrive
                    self.send_response(400)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                first, last = (int(x) for x in rng[6:].split("-"))
                data = (mini.data_dir / key).read_bytes()[first:last + 1]
                if mini.short:
                    data = data[:-10]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {first}-{last}/*")
                self.send_header("Content-Length", str(len(data) + (100 if mini.lie else 0)))
                if mini.lie:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
                if mini.lie:
                    self.close_connection = True

        return Handler

    def start(self) -> Mini:
        self.other = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        for httpd in (self.httpd, self.other):
            threading.Thread(target=httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        for httpd in (self.httpd, self.other):
            if httpd is not None:
                httpd.shutdown()
                httpd.server_close()

    def blob_requests(self) -> list[tuple[str, str, dict[str, str]]]:
        return [r for r in self.log if r[1].startswith("/blob/")]


@pytest.fixture()
def mini(data_dir: Path) -> Iterator[Mini]:
    server = Mini(data_dir).start()
    yield server
    server.stop()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_get_region_through_redirects_and_503s(mini: Mini, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.bam"
    region = ("chr1", 1000, 150_000)
    size = fetch(f"{mini.url}/reads/sample", out, reference_name=region[0], start=region[1],
                 end=region[2])
    assert size == out.stat().st_size
    assert_ticket_records(out.read_bytes(), tmp_path, data_dir / "sample.bam", [region])
    (method, path, _), *_ = mini.log
    assert method == "GET" and "referenceName=chr1" in path and "start=1000" in path
    modes = Counter(p.split("/")[2] for _, p, _ in mini.blob_requests())
    assert modes["redirect"] >= 1 and modes["away"] >= 1 and modes["flaky"] >= 3, modes
    assert modes["plain"] >= modes["redirect"] + modes["away"] + 1, modes
    # a redirect re-sends the block's Range (the redirect target refuses a request without)
    assert all("Range" in h for _, _, h in mini.blob_requests())
    assert all(n == 2 for n in mini.failures.values())  # each flaky block: 503, 503, 206


def test_several_regions_are_one_post(mini: Mini, data_dir: Path, tmp_path: Path) -> None:
    regions = [("chr2", 0, 40_000), ("chr1", 100_000, 120_000)]
    out = tmp_path / "p.bam"
    fetch(f"{mini.url}/reads/sample", out, regions=["chr2:1-40000", regions[1]])
    assert_ticket_records(out.read_bytes(), tmp_path, data_dir / "sample.bam", regions)
    (method, _, headers), *_ = mini.log
    assert method == "POST" and headers["Content-Type"] == "application/json"


def test_variants_and_iter_blocks_stream_in_order(mini: Mini, data_dir: Path,
                                                  tmp_path: Path) -> None:
    url = f"{mini.url}/variants/calls"
    region = ("X", 0, 100_000)
    pieces = list(iter_blocks(url, reference_name="X", end=100_000, format="vcf"))
    out = tmp_path / "v.vcf.gz"
    fetch(url, out, reference_name="X", end=100_000, format="VCF", concurrency=1)
    assert b"".join(pieces) == out.read_bytes()
    assert_ticket_records(out.read_bytes(), tmp_path, data_dir / "calls.vcf.gz", [region])


def test_whole_file_md5_and_bounded_parallelism(mini: Mini, data_dir: Path,
                                                tmp_path: Path) -> None:
    """A ticket of many blocks is fetched several at a time, never more than asked."""
    regions = [(f"chr{c}", s, s + 2_000) for c in (1, 2) for s in range(0, 160_000, 20_000)]
    mini.delay = 0.05
    dl = tmp_path / "dl"
    dl.mkdir()
    out = dl / "many.bam"
    ticket = request_ticket(f"{mini.url}/reads/sample", regions=regions)
    # more urls to fetch than may be in flight (inline blocks are no fetch)
    assert sum(u["url"].startswith("http") for u in ticket["urls"]) > 3, ticket["urls"]
    fetch({"htsget": ticket}, out, concurrency=3)
    assert 2 <= mini.max_in_flight <= 3, mini.max_in_flight
    assert_ticket_records(out.read_bytes(), tmp_path, data_dir / "sample.bam", regions)
    whole = dl / "whole.bam"
    fetch(f"{mini.url}/reads/sample", whole)
    assert whole.read_bytes() == (data_dir / "sample.bam").read_bytes()
    ticket = request_ticket(f"{mini.url}/reads/sample")
    assert ticket["md5"]
    with pytest.raises(ClientError, match="md5 mismatch"):
        fetch({"htsget": {**ticket, "md5": "0" * 32}}, dl / "bad.bam")
    assert leftovers(dl) == ["many.bam", "whole.bam"]


def test_lying_content_length_leaves_no_file(mini: Mini, tmp_path: Path) -> None:
    mini.lie = True
    out = tmp_path / "out" / "lie.bam"
    out.parent.mkdir()
    with pytest.raises(ClientError, match="connection broken|Content-Length|IncompleteRead"):
        fetch(f"{mini.url}/reads/sample", out, reference_name="chr1", end=50_000, retries=1)
    assert leftovers(out.parent) == []
    # an existing file under that name is left as it was
    out.write_bytes(b"before")
    with pytest.raises(ClientError):
        fetch(f"{mini.url}/reads/sample", out, reference_name="chr1", end=50_000, retries=0)
    assert leftovers(out.parent) == ["lie.bam"] and out.read_bytes() == b"before"
    mini.lie, mini.short = False, True
    with pytest.raises(ClientError, match=r"bytes for a \d+-byte range"):
        fetch(f"{mini.url}/reads/sample", out, reference_name="chr1", end=50_000)
    assert leftovers(out.parent) == ["lie.bam"] and out.read_bytes() == b"before"


def test_token_goes_to_the_ticket_server_only(data_dir: Path, tmp_path: Path) -> None:
    mini = Mini(data_dir, token=TOKEN).start()
    try:
        with pytest.raises(ClientError, match="401 InvalidAuthentication"):
            fetch(f"{mini.url}/reads/sample", tmp_path / "x.bam", reference_name="chr1")
        assert leftovers(tmp_path) == []
        out = tmp_path / "t.bam"
        fetch(f"{mini.url}/reads/sample", out, reference_name="chr1", end=150_000, token=TOKEN)
        assert_ticket_records(out.read_bytes(), tmp_path, data_dir / "sample.bam",
                              [("chr1", 0, 150_000)])
        other = mini.other_url.rsplit(":", 1)[1]
        blobs = mini.blob_requests()
        away = [h for _, _, h in blobs if h.get("Host", "").endswith(f":{other}")]
        same = [h for _, _, h in blobs if not h.get("Host", "").endswith(f":{other}")]
        assert same and away
        assert all(h.get("Authorization") == f"Bearer {TOKEN}" for h in same)
        assert not any("Authorization" in h for h in away)
    finally:
        mini.stop()


def test_usage_mistakes_are_invalid_request(mini: Mini, tmp_path: Path) -> None:
    for kwargs in ({"regions": ["chr1:500-100"]}, {"start": 5}, {"regions": []},
                   {"reference_name": "chr1", "regions": ["chr2"]}):
        with pytest.raises(InvalidRequest):
            fetch(f"{mini.url}/reads/sample", tmp_path / "x", **kwargs)
    for url in ("localhost:8080/reads/x", "ftp://host/reads/x", "/reads/x"):
        with pytest.raises(InvalidRequest, match="not an http"):
            fetch(url, tmp_path / "x")
    with pytest.raises(InvalidRequest, match="no such directory"):
        fetch(f"{mini.url}/reads/sample", tmp_path / "no" / "x")
    assert leftovers(tmp_path) == []


def run_cli(*args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "htsgetr", *args], capture_output=True,
                          timeout=120, **kw)


def test_cli_fetch_regions_token_file_and_stdout(data_dir: Path, tmp_path: Path) -> None:
    mini = Mini(data_dir, token=TOKEN).start()
    try:
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        out = tmp_path / "c.bam"
        regions = [("chr1", 0, 1000), ("chr2", 999, 30_000)]
        proc = run_cli("fetch", f"{mini.url}/reads/sample", "-o", str(out), "--region",
                       "chr1:1-1000", "--region", "chr2:1000-30000", "--token-file",
                       str(token_file))
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == b""  # not a terminal: no bar, no summary
        assert_ticket_records(out.read_bytes(), tmp_path, data_dir / "sample.bam", regions)
        proc = run_cli("fetch", f"{mini.url}/variants/calls?referenceName=X&end=100000",
                       "-o", "-", "--token", TOKEN)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == b""
        assert_ticket_records(proc.stdout, tmp_path, data_dir / "calls.vcf.gz",
                              [("X", 0, 100_000)])
        mini.lie = True
        dl = tmp_path / "dl"
        dl.mkdir()
        bad = dl / "bad.bam"
        proc = run_cli("fetch", f"{mini.url}/reads/sample", "-o", str(bad), "-r", "chr1",
                       "--token", TOKEN)
        assert proc.returncode == 1 and b"Traceback" not in proc.stderr
        assert len(proc.stderr.decode().strip().splitlines()) == 1, proc.stderr
        assert leftovers(dl) == []
    finally:
        mini.stop()


def test_cli_progress_bar_when_asked(mini: Mini, tmp_path: Path) -> None:
    proc = run_cli("fetch", f"{mini.url}/reads/sample", "-o", str(tmp_path / "p.bam"),
                   "--progress", "-r", "chr1")
    assert proc.returncode == 0, proc.stderr
    text = proc.stderr.decode()
    assert "B/s" in text and "100%" in text, text
    n = re.findall(r"(\d+)/(\d+) blocks", text)[-1]
    assert n[0] == n[1] and int(n[1]) > 1, text


def test_cli_progress_bar_on_a_terminal_only(mini: Mini, tmp_path: Path) -> None:
    """Under a pseudo-terminal (util-linux `script`) the bar shows by itself."""
    import shlex
    import shutil

    if shutil.which("script") is None:
        pytest.skip("no `script` to make a pseudo-terminal")
    cmd = shlex.join([sys.executable, "-m", "htsgetr", "fetch", f"{mini.url}/reads/sample",
                      "-o", str(tmp_path / "t.bam"), "-r", "chr2"])
    proc = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout
    text = proc.stdout.decode(errors="replace")
    assert "100%" in text and "blocks" in text and "bytes ->" in text, text
    quiet = run_cli("fetch", f"{mini.url}/reads/sample", "-o", str(tmp_path / "q.bam"), "-r",
                    "chr2")
    assert quiet.returncode == 0 and quiet.stderr == b""
    assert (tmp_path / "t.bam").read_bytes() == (tmp_path / "q.bam").read_bytes()
