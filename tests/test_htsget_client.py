"""The GA4GH reference client (PyPI `htsget`, its `htsget.get()` and its `htsget` command)
against a real `htsgetr serve`, over HTTP and HTTPS, for BAM, CRAM, VCF and BCF: whole files,
regions, unplaced reads and `class=header`. What the client writes must hold exactly the
records htslib (pysam) gives for the same region of the original file, in order; the client's
own Content-Length check runs on every /data block (the server must send the header, or the
check would be vacuous), and the ticket's md5 equals the md5 of what the client wrote."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import pysam
import pytest
import requests
from conftest import (
    Server,
    assert_records,
    assert_ticket_records,
    file_records,
    free_port,
    make_bam,
    make_vcf,
)

htsget = pytest.importorskip("htsget", reason="the GA4GH htsget client (pip install htsget)")
from htsget.io import SynchronousDownloadManager  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("samtools") is None or shutil.which("bcftools")
                                is None, reason="samtools/bcftools not installed")

HTSGET_CLI = str(Path(sys.executable).with_name("htsget"))

#: id -> (endpoint, htsget format, file suffix)
FILES = {
    "bam": ("reads", "BAM", ".bam"),
    "cram": ("reads", "CRAM", ".cram"),
    "vcf": ("variants", "VCF", ".vcf.gz"),
    "bcf": ("variants", "BCF", ".bcf"),
}

#: regions per kind, as (referenceName, start, end); None: absent from the query
READ_REGIONS: list[tuple[str, Optional[int], Optional[int]]] = [
    ("chr1", 1000, 60_000), ("chr1", 59_990, 60_010), ("chr2", None, None), ("chr3", 0, 1),
    ("chr1", 100_000, None), ("chrEmpty", None, None), ("*", None, None),
]
VARIANT_REGIONS: list[tuple[str, Optional[int], Optional[int]]] = [
    ("1", 1000, 150_000), ("1", 149_990, 150_010), ("2", None, None), ("X", 0, 50),
    ("X", 100_000, None), ("empty", None, None),
]


@pytest.fixture(scope="module")
def client_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small BAM/CRAM/VCF/BCF with indexes: references of varied size, one empty, placed
    unmapped and unplaced reads (make_bam / make_vcf)."""
    d = tmp_path_factory.mktemp("htsget-client")
    make_bam(d / "bam.bam", seed=31, n_reads=1500,
             refs=[("chr1", 120_000), ("chr2", 60_000), ("chrEmpty", 5_000), ("chr3", 40_000)])
    subprocess.run(["samtools", "view", "-C", "--output-fmt-option", "no_ref=1",
                    "--output-fmt-option", "seqs_per_slice=200", "-o", str(d / "cram.cram"),
                    str(d / "bam.bam")], check=True)
    subprocess.run(["samtools", "index", str(d / "cram.cram")], check=True)
    make_vcf(d / "vcf.vcf.gz", seed=32, n=1500)
    subprocess.run(["bcftools", "view", "-Ob", "-o", str(d / "bcf.bcf"), str(d / "vcf.vcf.gz")],
                   check=True)
    subprocess.run(["bcftools", "index", str(d / "bcf.bcf")], check=True)
    return d


@pytest.fixture(scope="module", params=["http", "https"])
def served(request: pytest.FixtureRequest, client_dir: Path,
           cert: tuple[Path, Path]) -> Iterator[tuple[Server, dict[str, str]]]:
    """The files served over HTTP or HTTPS (self-signed; the client trusts it through
    REQUESTS_CA_BUNDLE, as a user of the CLI would)."""
    port = free_port()
    args = ["--data-dir", str(client_dir), "--port", str(port), "--workers", "2"]
    env: dict[str, str] = {}
    if request.param == "https":
        args += ["--tls-cert", str(cert[0]), "--tls-key", str(cert[1])]
        env["REQUESTS_CA_BUNDLE"] = str(cert[0])
    srv = Server(args, port, scheme=request.param)
    srv.start(verify=str(cert[0]))
    yield srv, env
    srv.stop()


def _get(url: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
         **kw: Any) -> tuple[bytes, Optional[str], dict]:
    """Run the client's download manager (what `htsget.get()` runs): the bytes it wrote, the
    ticket's md5 and the ticket; no retries, so a 5xx or a short block fails at once."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = io.BytesIO()
    manager = SynchronousDownloadManager(url, out, max_retries=0, retry_wait=0, timeout=60,
                                         **kw)
    manager.run()
    return out.getvalue(), manager.md5, manager.ticket


def _region_kw(name: str, start: Optional[int], end: Optional[int]) -> dict[str, Any]:
    return {"reference_name": name, "start": start, "end": end}


# --------------------------------------------------------------------------- htsget.get()


@pytest.mark.parametrize("id", list(FILES))
def test_get_whole_file(served: tuple[Server, dict[str, str]], client_dir: Path,
                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, id: str) -> None:
    srv, env = served
    endpoint, fmt, suffix = FILES[id]
    payload, md5, ticket = _get(f"{srv.url}/{endpoint}/{id}", env, monkeypatch,
                                data_format=fmt)
    assert ticket["format"] == fmt
    original = client_dir / f"{id}{suffix}"
    assert_ticket_records(payload, tmp_path, original, None)
    # the ticket's md5 is what the client checks the file against: a local whole file has one
    assert md5 is not None and hashlib.md5(payload).hexdigest() == md5
    # and through the public entry point, into a real file, the same bytes
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with open(tmp_path / f"get{suffix}", "wb") as f:
        htsget.get(f"{srv.url}/{endpoint}/{id}", f, data_format=fmt, max_retries=0)
    assert (tmp_path / f"get{suffix}").read_bytes() == payload


@pytest.mark.parametrize("id", list(FILES))
def test_get_regions(served: tuple[Server, dict[str, str]], client_dir: Path, tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch, id: str) -> None:
    srv, env = served
    endpoint, fmt, suffix = FILES[id]
    regions = READ_REGIONS if endpoint == "reads" else VARIANT_REGIONS
    original = client_dir / f"{id}{suffix}"
    nonempty = 0
    for region in regions:
        payload, _md5, ticket = _get(f"{srv.url}/{endpoint}/{id}", env, monkeypatch,
                                     data_format=fmt, **_region_kw(*region))
        assert ticket["format"] == fmt
        nonempty += bool(assert_ticket_records(payload, tmp_path, original, [region]))
    assert nonempty >= len(regions) // 2  # most regions do select records


@pytest.mark.parametrize("id", list(FILES))
def test_get_header(served: tuple[Server, dict[str, str]], client_dir: Path, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch, id: str) -> None:
    """The client has no class option; it keeps a query already in the URL, as documented."""
    srv, env = served
    endpoint, fmt, suffix = FILES[id]
    payload, _md5, ticket = _get(f"{srv.url}/{endpoint}/{id}?class=header", env, monkeypatch,
                                 data_format=fmt)
    assert all(u.get("class") == "header" for u in ticket["urls"])
    out = tmp_path / f"header{suffix}"
    out.write_bytes(payload)
    assert file_records(out) == []
    assert _header_text(out) == _header_text(client_dir / f"{id}{suffix}")


def _header_text(path: Path) -> str:
    if path.suffix in (".bam", ".cram"):
        with pysam.AlignmentFile(str(path), check_sq=False) as f:
            return str(f.header)
    with pysam.VariantFile(str(path)) as f:
        return str(f.header)


def test_data_blocks_carry_content_length(served: tuple[Server, dict[str, str]],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's Content-Length check only runs when the header is there: every /data
    block of every format sends it, equal to the body, never content-encoded."""
    srv, env = served
    verify = env.get("REQUESTS_CA_BUNDLE", True)
    seen = 0
    for id, (endpoint, fmt, _suffix) in FILES.items():
        t = requests.get(f"{srv.url}/{endpoint}/{id}", params={"format": fmt}, timeout=30,
                         verify=verify).json()
        for block in t["htsget"]["urls"]:
            if block["url"].startswith("data:"):
                continue
            resp = requests.get(block["url"], headers=block.get("headers", {}), timeout=30,
                                verify=verify, stream=True)
            body = resp.raw.read(decode_content=False)
            assert resp.status_code in (200, 206)
            assert "Content-Encoding" not in resp.headers
            assert int(resp.headers["Content-Length"]) == len(body)
            seen += 1
    assert seen >= 4


def test_get_unknown_id_is_a_client_error(served: tuple[Server, dict[str, str]],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    srv, env = served
    with pytest.raises(htsget.exceptions.ClientError) as err:
        _get(f"{srv.url}/reads/no-such-file", env, monkeypatch)
    assert "NotFound" in str(err.value.args)


# --------------------------------------------------------------------------- the CLI


def _cli(url: str, out: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([HTSGET_CLI, url, "-O", str(out), "--max-retries", "0", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


@pytest.mark.parametrize("id", list(FILES))
def test_cli_whole_region_header(served: tuple[Server, dict[str, str]], client_dir: Path,
                                 tmp_path: Path, id: str) -> None:
    if not Path(HTSGET_CLI).exists():
        pytest.skip("the htsget command is not installed beside this Python")
    srv, env = served
    endpoint, fmt, suffix = FILES[id]
    original = client_dir / f"{id}{suffix}"
    url = f"{srv.url}/{endpoint}/{id}"
    out = tmp_path / f"cli{suffix}"

    done = _cli(url, out, env, "--format", fmt)
    assert done.returncode == 0, done.stderr
    assert_ticket_records(out.read_bytes(), tmp_path, original, None)

    name, start, end = (READ_REGIONS if endpoint == "reads" else VARIANT_REGIONS)[0]
    done = _cli(url, out, env, "--format", fmt, "-r", name, "-s", str(start), "-e", str(end))
    assert done.returncode == 0, done.stderr
    assert assert_ticket_records(out.read_bytes(), tmp_path, original, [(name, start, end)])

    done = _cli(url + "?class=header", out, env, "--format", fmt)
    assert done.returncode == 0, done.stderr
    assert file_records(out) == [] and _header_text(out) == _header_text(original)


def test_cli_reports_server_errors(served: tuple[Server, dict[str, str]],
                                   tmp_path: Path) -> None:
    """A refused request is exit status 1 with the server's htsget error on stderr."""
    if not Path(HTSGET_CLI).exists():
        pytest.skip("the htsget command is not installed beside this Python")
    srv, env = served
    done = _cli(f"{srv.url}/reads/bam", tmp_path / "x.bam", env, "-r", "chr1", "-s", "500",
                "-e", "100")
    assert done.returncode == 1
    assert "InvalidRange" in done.stderr
    done = _cli(f"{srv.url}/variants/absent", tmp_path / "x.vcf", env)
    assert done.returncode == 1 and "NotFound" in done.stderr


def test_cli_stdout_matches_samtools(served: tuple[Server, dict[str, str]], client_dir: Path,
                                     tmp_path: Path) -> None:
    """`htsget URL | samtools view -` reads as samtools reads the original region."""
    if not Path(HTSGET_CLI).exists():
        pytest.skip("the htsget command is not installed beside this Python")
    srv, env = served
    cmd = [HTSGET_CLI, f"{srv.url}/reads/bam", "-r", "chr2", "-s", "10000", "-e", "30000",
           "--max-retries", "0"]
    got = subprocess.run(cmd, capture_output=True, timeout=120, env={**os.environ, **env},
                         check=True).stdout
    view = subprocess.run(["samtools", "view", "-"], input=got, capture_output=True,
                          check=True).stdout.decode().splitlines()
    want = subprocess.run(["samtools", "view", str(client_dir / "bam.bam"), "chr2:10001-30000"],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert want
    assert_records(view, want, "htsget | samtools view")


# --------------------------------------------------------------------------- htslib


def _htslib(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    # htslib's libcurl trusts the test CA through CURL_CA_BUNDLE, as a user would point it
    extra = {"CURL_CA_BUNDLE": env["REQUESTS_CA_BUNDLE"]} if env else {}
    return subprocess.run(args, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **extra})


def _region_text(name: str, start: Optional[int], end: Optional[int]) -> str:
    """samtools/bcftools notation (1-based, inclusive) of a 0-based half-open region."""
    if start is None and end is None:
        return name
    return f"{name}:{(start or 0) + 1}-{end if end is not None else ''}".rstrip("-")


@pytest.mark.parametrize("id", list(FILES))
def test_htslib_reads_ticket_urls(served: tuple[Server, dict[str, str]], client_dir: Path,
                                  id: str) -> None:
    """samtools view / view -H / view -c and bcftools view given ticket URLs (htslib fetches
    the ticket and its blocks itself): the same lines as on the original file."""
    srv, env = served
    endpoint, fmt, suffix = FILES[id]
    original = str(client_dir / f"{id}{suffix}")
    tool = (["samtools", "view", "--no-PG"] if endpoint == "reads"
            else ["bcftools", "view", "--no-version"])
    url = f"{srv.url}/{endpoint}/{id}?format={fmt}"
    regions = READ_REGIONS if endpoint == "reads" else VARIANT_REGIONS
    for name, start, end in regions[:4]:
        query = f"&referenceName={name}" + (f"&start={start}" if start is not None else "") + \
            (f"&end={end}" if end is not None else "")
        body = ["-H"] if endpoint == "variants" else []
        got = _htslib([*tool, *body, url + query], env)
        assert got.returncode == 0, got.stderr
        want = subprocess.run([*tool, *body, original, _region_text(name, start, end)],
                              capture_output=True, text=True, check=True).stdout
        assert got.stdout.splitlines() == want.splitlines(), (name, start, end)
    header = _htslib([*tool, "-h" if endpoint == "variants" else "-H",
                      url + "&class=header"], env)
    assert header.returncode == 0, header.stderr
    want = subprocess.run([*tool, "-h" if endpoint == "variants" else "-H", original],
                          capture_output=True, text=True, check=True).stdout
    if endpoint == "variants":  # header only: bcftools -h prints the header lines
        want = "".join(line + "\n" for line in want.splitlines() if line.startswith("#"))
    assert header.stdout == want
    if endpoint == "reads":
        count = _htslib(["samtools", "view", "-c", url], env)
        want_n = subprocess.run(["samtools", "view", "-c", original], capture_output=True,
                                text=True, check=True).stdout
        assert count.returncode == 0 and count.stdout == want_n and int(want_n) > 1000


@pytest.mark.parametrize("probe", ["reads/bam.bai", "reads/bam.csi", "reads/cram.crai",
                                   "variants/vcf.tbi", "variants/vcf.csi", "variants/bcf.csi",
                                   "reads/bam.bam.bai"])
def test_htslib_index_probes_are_a_clean_404(served: tuple[Server, dict[str, str]],
                                             probe: str) -> None:
    """htslib asks `<ticket URL>.bai` (and friends) when given a region on the command line:
    a plain 404 in htsget JSON, never a ticket for another ID nor a 500."""
    srv, env = served
    resp = requests.get(f"{srv.url}/{probe}", timeout=30,
                        verify=env.get("REQUESTS_CA_BUNDLE", True))
    assert resp.status_code == 404
    assert resp.json()["htsget"]["error"] == "NotFound"
