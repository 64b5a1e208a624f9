"""Real TLS: a generated certificate, gunicorn serving HTTPS, https ticket urls, htslib reading."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pysam
import pytest
import requests
from conftest import Server, free_port, reassemble


@pytest.fixture(scope="module")
def tls_server(cert: tuple[Path, Path], data_dir: Path):
    port = free_port()
    srv = Server(["--data-dir", str(data_dir), "--port", str(port), "--tls-cert", str(cert[0]),
                  "--tls-key", str(cert[1])], port, scheme="https")
    srv.start(verify=str(cert[0]))
    yield srv
    srv.stop()


def test_https_tickets_and_data(tls_server: Server, cert: tuple[Path, Path], data_dir: Path,
                                tmp_path: Path) -> None:
    url = f"{tls_server.url}/reads/sample?referenceName=chr2&start=1000&end=40000"
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url, timeout=10)  # an unknown CA is refused: this is real TLS
    t = requests.get(url, timeout=10, verify=str(cert[0])).json()
    urls = [u["url"] for u in t["htsget"]["urls"] if not u["url"].startswith("data:")]
    assert urls and all(u.startswith(f"https://127.0.0.1:{tls_server.port}/data/") for u in urls)
    out = tmp_path / "p.bam"
    out.write_bytes(reassemble(t, verify=str(cert[0])))
    with pysam.AlignmentFile(str(out), check_sq=False) as f:
        got = {r.to_string() for r in f.fetch(until_eof=True)}
    with pysam.AlignmentFile(str(data_dir / "sample.bam")) as f:
        expected = {r.to_string() for r in f.fetch("chr2", 1000, 40000)}
    assert expected and expected <= got


@pytest.mark.skipif(shutil.which("samtools") is None, reason="samtools not installed")
def test_samtools_over_https(tls_server: Server, cert: tuple[Path, Path], data_dir: Path) -> None:
    url = f"{tls_server.url}/reads/sample?referenceName=chr1&start=5000&end=9000"
    env = {**os.environ, "CURL_CA_BUNDLE": str(cert[0])}
    out = subprocess.run(["samtools", "view", url], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    with pysam.AlignmentFile(str(data_dir / "sample.bam")) as f:
        expected = {r.query_name for r in f.fetch("chr1", 5000, 9000)}
    assert expected == {line.split("\t")[0] for line in out.stdout.splitlines()}
