"""The client and `htsgetr fetch` against a real server: payloads, errors, md5, retries."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pysam
import pytest
from conftest import Server, assert_records, assert_ticket_records, htslib_records, reassemble

from htsgetr.client import ClientError, fetch, get_ticket


def test_fetch_region_equals_reassembly(server: Server, data_dir: Path, tmp_path: Path) -> None:
    url = f"{server.url}/reads/sample?referenceName=chr1&start=1000&end=30000"
    out = tmp_path / "r.bam"
    size = fetch(url, str(out))
    assert size == out.stat().st_size
    assert out.read_bytes() == reassemble({"htsget": get_ticket(url)})
    assert_ticket_records(out.read_bytes(), tmp_path, data_dir / "sample.bam",
                          [("chr1", 1000, 30000)])


def test_whole_file_md5_checked(server: Server, data_dir: Path, tmp_path: Path) -> None:
    ticket = get_ticket(f"{server.url}/reads/sample")
    assert ticket["md5"] == hashlib.md5((data_dir / "sample.bam").read_bytes()).hexdigest()
    fetch({"htsget": ticket}, str(tmp_path / "a.bam"))
    assert (tmp_path / "a.bam").read_bytes() == (data_dir / "sample.bam").read_bytes()
    with pytest.raises(ClientError, match="md5 mismatch"):
        fetch({"htsget": {**ticket, "md5": "0" * 32}}, str(tmp_path / "b.bam"))


def test_htsget_errors_and_post(server: Server, data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ClientError, match="404 NotFound"):
        fetch(f"{server.url}/reads/nope", str(tmp_path / "x"))
    with pytest.raises(ClientError, match="400 InvalidRange"):
        get_ticket(f"{server.url}/reads/sample?referenceName=chr1&start=9&end=1")
    body = {"regions": [{"referenceName": "chr2", "start": 0, "end": 5000},
                        {"referenceName": "chr1", "start": 200_000, "end": 201_000}]}
    assert fetch(f"{server.url}/reads/sample", str(tmp_path / "p.bam"), body=body) > 28
    got = assert_ticket_records((tmp_path / "p.bam").read_bytes(), tmp_path,
                                data_dir / "sample.bam",
                                [("chr2", 0, 5000), ("chr1", 200_000, 201_000)])
    assert got


def test_retries_5xx_then_succeeds(tmp_path: Path) -> None:
    """A data server that fails twice with 503 and then answers is retried, not given up on."""
    calls = []

    class Flaky(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            calls.append(self.path)
            if len(calls) <= 2:
                self.send_response(503)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"abcd")

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/x"
        ticket = {"htsget": {"format": "BAM", "urls": [
            {"url": url, "headers": {"Range": "bytes=0-3"}},
            {"url": "data:;base64,ZWY="}]}}
        assert fetch(ticket, str(tmp_path / "f")) == 6
        assert (tmp_path / "f").read_bytes() == b"abcdef" and len(calls) == 3
        short = {"htsget": {"format": "BAM", "urls": [{"url": url,
                                                       "headers": {"Range": "bytes=0-9"}}]}}
        with pytest.raises(ClientError, match="4 bytes for a 10-byte range"):
            fetch(short, str(tmp_path / "g"))
    finally:
        httpd.shutdown()


def test_cli_fetch(server: Server, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "v.vcf.gz"
    url = f"{server.url}/variants/calls?referenceName=X&start=0&end=100000"
    proc = subprocess.run([sys.executable, "-m", "htsgetr", "fetch", url, "-o", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    with pysam.VariantFile(str(out)) as f:
        got = [str(r) for r in f]
    assert_records(got, htslib_records(data_dir / "calls.vcf.gz", [("X", 0, 100000)]))
    bad = subprocess.run([sys.executable, "-m", "htsgetr", "fetch", f"{server.url}/reads/nope",
                          "-o", str(tmp_path / "n")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "NotFound" in bad.stderr and "Traceback" not in bad.stderr


def test_regions_and_class_against_htsgetr(server: Server, data_dir: Path, tmp_path: Path) -> None:
    """The keyword API and the command line's --region against a real `htsgetr serve`."""
    regions = [("chr2", 0, 5000), ("chr1", 200_000, 201_000), ("*", 0, 0)]
    out = tmp_path / "k.bam"
    fetch(f"{server.url}/reads/sample", str(out),
          regions=[("chr2", 0, 5000), "chr1:200001-201000", "*"])
    assert_ticket_records(out.read_bytes(), tmp_path, data_dir / "sample.bam", regions)
    header = tmp_path / "h.bam"
    fetch(f"{server.url}/reads/sample", header, klass="header")
    with pysam.AlignmentFile(str(header)) as f:
        assert list(f.references)[:2] and not list(f.fetch(until_eof=True))
    cli = tmp_path / "cli.bcf"
    proc = subprocess.run([sys.executable, "-m", "htsgetr", "fetch", f"{server.url}/variants/calls",
                           "--format", "BCF", "-r", "X:1-100000", "-r", "2", "-o", str(cli), "-q"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    with pysam.VariantFile(str(cli)) as f:
        got = [str(r) for r in f]
    want = htslib_records(data_dir / "calls.bcf", [("X", 0, 100_000), ("2", 0, 1 << 29)])
    assert_records(got, want)
