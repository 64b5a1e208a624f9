"""igv.js (npm `igv`, pinned) in headless Chromium (Debian's /usr/bin/chromium, driven by
npm `playwright-core`): a page served from ANOTHER origin loads an alignment track and a
variant track from a real `htsgetr serve` over htsget, goes to a region and then another, and
the test asserts on what igv reports: the reads and variants igv holds for each query are
exactly htslib's records for the region igv asked the server for, and some lie in view.

The tracks send an extra request header (`X-Request-Id`), so the ticket requests need a CORS
preflight that allows it: with the defaults (the htsget spec's echo) the tracks load; with an
explicit `allow_headers` list that lacks it they are dropped, as the issue observed before the
CORS fix. A screenshot is kept under build/browser/.

Run by `make test-browser` (which installs chromium and the pinned npm packages); skipped
elsewhere unless HTSGETR_BROWSER=1.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import parse_qs, urlencode, urlparse

import pysam
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import ROOT, Server, free_port, make_bam  # noqa: E402

HERE = Path(__file__).resolve().parent
NODE_MODULES = Path(os.environ.get("HTSGETR_NODE_MODULES", ROOT / "build/browser/node_modules"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "build" / "browser"
REFS = [("chr1", 60_000), ("chr2", 30_000)]

pytestmark = pytest.mark.skipif(os.environ.get("HTSGETR_BROWSER") != "1",
                                reason="the browser test runs with `make test-browser`")


def _need_tools() -> None:
    for what, ok in [("chromium", Path(CHROMIUM).exists()), ("node", shutil.which("node")),
                     ("npm igv", (NODE_MODULES / "igv/dist/igv.min.js").exists()),
                     ("npm playwright-core", (NODE_MODULES / "playwright-core").exists())]:
        if not ok:
            pytest.fail(f"{what} missing: run `make browser-deps`")


def write_vcf(path: Path, seed: int, n: int) -> None:
    """SNVs and short indels on REFS (igv and htslib agree on where such records lie)."""
    rng = random.Random(seed)
    lines = ["##fileformat=VCFv4.2", *[f"##contig=<ID={c},length={ln}>" for c, ln in REFS],
             '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ts1"]
    recs = sorted((rng.randrange(len(REFS)), rng.randint(1, REFS[0][1] // 2)) for _ in range(n))
    for i, (c, pos) in enumerate(recs):
        ref = rng.choice(["A", "C", "G", "T", "ACG"])
        lines.append(f"{REFS[c][0]}\t{min(pos, REFS[c][1])}\tv{i}\t{ref}\tT\t50\tPASS\t.\tGT\t0/1")
    plain = path.with_suffix("")
    plain.write_text("\n".join(lines) + "\n")
    pysam.tabix_index(str(plain), preset="vcf", force=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The data (served by htsgetr) and the page (served from another origin)."""
    _need_tools()
    data = tmp_path_factory.mktemp("igv-data")
    make_bam(data / "reads.bam", seed=5, refs=REFS, n_reads=2000)
    write_vcf(data / "calls.vcf.gz", seed=3, n=300)
    page = tmp_path_factory.mktemp("igv-page")
    shutil.copy(HERE / "igv_page.html", page / "index.html")
    shutil.copy(NODE_MODULES / "igv/dist/igv.min.js", page / "igv.min.js")
    rng = random.Random(1)
    with open(page / "reference.fa", "w") as f:
        for name, length in REFS:
            seq = "".join(rng.choices("ACGT", k=length))
            f.write(f">{name}\n" + "\n".join(seq[i:i + 60] for i in range(0, length, 60)) + "\n")
    pysam.faidx(str(page / "reference.fa"))
    return {"data": data, "page": page}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def page_origin(site: dict[str, Path]) -> Iterator[str]:
    """The page's own origin: localhost on another port (htsgetr is at 127.0.0.1)."""
    handler = functools.partial(_Quiet, directory=str(site["page"]))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{httpd.server_address[1]}"
    httpd.shutdown()


def serve(data: Path, config: Optional[str] = None, tmp: Optional[Path] = None) -> Server:
    port = free_port()
    args = ["--data-dir", str(data), "--port", str(port), "--workers", "1"]
    if config is not None:
        assert tmp is not None
        (tmp / "htsget.toml").write_text(config)
        args += ["--config", str(tmp / "htsget.toml")]
    return Server(args, port).start()


def run_igv(url: str, screenshot: Optional[Path], locus2: Optional[str]) -> dict[str, Any]:
    """One Chromium run of tests/browser/igv_driver.mjs: what igv reported, and the
    requests the page made."""
    env = {**os.environ, "HTSGETR_NODE_MODULES": str(NODE_MODULES), "CHROMIUM": CHROMIUM}
    args = ["node", str(HERE / "igv_driver.mjs"), url, str(screenshot or ""), locus2 or ""]
    done = subprocess.run(args, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _last_query(requests_: list[dict], server: str, endpoint: str, chrom: str) -> dict:
    """The last ticket request igv made for `chrom` on `endpoint`: its query."""
    found = None
    for r in requests_:
        u = urlparse(r["url"])
        if r["url"].startswith(server) and u.path.startswith(f"/{endpoint}/"):
            q = {k: v[0] for k, v in parse_qs(u.query).items()}
            if q.get("referenceName") == chrom:
                found = {**q, "headers": r["headers"]}
    assert found is not None, f"igv asked {endpoint} nothing for {chrom}"
    return found


def expected_reads(bam: Path, chrom: str, start: int, end: int) -> set[str]:
    """htslib's reads for the region, as igv shows them (mapped ones)."""
    with pysam.AlignmentFile(str(bam)) as f:
        return {r.query_name for r in f.fetch(chrom, start, end) if not r.is_unmapped}


def expected_variants(vcf: Path, chrom: str, start: int, end: int) -> list[str]:
    with pysam.VariantFile(str(vcf)) as f:
        return sorted(f"{r.chrom}:{r.pos}" for r in f.fetch(chrom, start, end))


def check_tracks(report: dict, out: dict, server: Server, site: dict[str, Path]) -> None:
    tracks = {t["name"]: t for t in report["tracks"]}
    reads, variants = tracks["reads"], tracks["variants"]
    chrom = reads["chr"]
    q = _last_query(out["requests"], server.url, "reads", chrom)
    want = expected_reads(site["data"] / "reads.bam", chrom, int(q["start"]), int(q["end"]))
    assert want and set(reads["cached"]) == want
    assert len(reads["cached"]) == len(want)  # each read once
    assert reads["inView"] > 0
    # igv asks for more variants than it keeps: its cache holds those overlapping the
    # interval it cached (cacheStart..cacheEnd), out of what the server answered
    q = _last_query(out["requests"], server.url, "variants", chrom)
    start = max(int(q.get("start", 0)), int(variants["cacheStart"]))
    end = min(int(q.get("end", 10**9)), int(variants["cacheEnd"]))
    want_v = expected_variants(site["data"] / "calls.vcf.gz", chrom, start, end)
    assert want_v and sorted(variants["cached"]) == want_v
    assert variants["inView"] > 0


def test_igv_reads_and_variants_cross_origin(site: dict[str, Path], page_origin: str,
                                             tmp_path: Path) -> None:
    server = serve(site["data"])
    try:
        params = {"htsget": server.url, "reads": "reads", "variants": "calls",
                  "locus": "chr1:10000-12000", "header": "X-Request-Id"}
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "igv-reads-variants.png"
        out = run_igv(f"{page_origin}/index.html?{urlencode(params)}", shot, "chr2:1000-3000")
        log = server.output()
        (ARTIFACTS / "igv-server.log").write_text(log)
    finally:
        server.stop()
    assert out["error"] is None, out["error"]
    assert not out["failed"], out["failed"]
    assert urlparse(page_origin).netloc != urlparse(server.url).netloc  # cross-origin
    assert out["result"]["locus"] == "chr1:10000-12000"
    check_tracks(out["result"], out, server, site)
    assert out["after"]["locus"] == "chr2:1000-3000"
    check_tracks(out["after"], out, server, site)
    # the tracks sent the extra header on their ticket requests, so the browser preflighted
    # them (OPTIONS, answered by the server); the /data requests carry only `Range`, which
    # the Fetch standard safelists: Chromium sends those without a preflight
    tickets = [r for r in out["requests"] if "/reads/" in r["url"] or "/variants/" in r["url"]]
    assert tickets and all("x-request-id" in r["headers"] for r in tickets)
    assert '"OPTIONS /reads/reads?' in log and '"OPTIONS /variants/calls?' in log
    assert '"GET /data/reads.bam' in log
    assert shot.stat().st_size > 10_000


def test_igv_drops_tracks_when_preflight_refuses_the_header(site: dict[str, Path],
                                                            page_origin: str,
                                                            tmp_path: Path) -> None:
    """The issue's observation, kept as a check that the browser really enforces CORS: with
    `allow_headers` limited to the old fixed list, the X-Request-Id tracks cannot load."""
    server = serve(site["data"], '[ticket_server.cors]\n'
                   'allow_headers = ["Authorization", "Content-Type", "Range"]\n', tmp_path)
    try:
        params = {"htsget": server.url, "reads": "reads", "variants": "calls",
                  "locus": "chr1:10000-12000", "header": "X-Request-Id"}
        out = run_igv(f"{page_origin}/index.html?{urlencode(params)}", None, None)
    finally:
        server.stop()
    failed_tickets = [f for f in out["failed"] if "/reads/" in f["url"]
                      or "/variants/" in f["url"]]
    assert failed_tickets or out["error"], out
    loaded = {t["name"]: t for t in (out["result"] or {"tracks": []})["tracks"]}
    assert not any(t["cached"] for t in loaded.values())


# --------------------------------------------------------------------------- the viewer


def test_viewer_shows_reads_and_variants_with_a_token(site: dict[str, Path],
                                                      tmp_path: Path) -> None:
    """GET /viewer/<id> on a server that wants a bearer token: the page takes the token from
    its #fragment, picks the track from the formats the ID has, builds its reference from the
    header, and igv holds exactly htslib's reads for the region it asked for. Without a token
    the page says the server refused it."""
    from authkit import Key, claims

    key = Key("RSA", "main")
    (tmp_path / "jwt.pub").write_bytes(key.public_pem())
    server = serve(site["data"], f"""
[viewer]
enabled = true
[auth]
validate_audience = ["htsget-test"]
validate_issuer = ["https://idp.test"]
[auth.jwt]
kind = "public_key"
path = "{tmp_path / 'jwt.pub'}"
[auth.data_urls]
secret = "viewer-test-data-url-secret"
""", tmp_path)
    token = key.sign(claims())
    try:
        shot = ARTIFACTS / "viewer-reads.png"
        reads = run_igv(f"{server.url}/viewer/reads?locus=chr1:10000-12000#token={token}",
                        shot, "chr2:1000-3000")
        variants = run_igv(f"{server.url}/viewer/calls?locus=chr2:1-20000#token={token}",
                           ARTIFACTS / "viewer-variants.png", None)
        refused = run_igv(f"{server.url}/viewer/reads", None, None)
        log = server.output()
    finally:
        server.stop()
    assert reads["error"] is None, (reads["error"], reads["console"][-5:])
    assert reads["page"] == {"track": "alignment", "format": "bam", "references": 2}
    for report in (reads["result"], reads["after"]):
        track = report["tracks"][0]
        q = _last_query(reads["requests"], server.url, "reads", track["chr"])
        assert q["headers"]["authorization"] == f"Bearer {token}"
        want = expected_reads(site["data"] / "reads.bam", track["chr"], int(q["start"]),
                              int(q["end"]))
        assert want and sorted(track["cached"]) == sorted(want) and track["inView"] > 0
    assert variants["error"] is None and variants["page"]["track"] == "variant"
    track = variants["result"]["tracks"][0]
    assert track["inView"] > 0
    assert set(track["cached"]) <= set(expected_variants(site["data"] / "calls.vcf.gz", "chr2",
                                                         0, REFS[1][1]))
    assert refused["error"] and "InvalidAuthentication" in refused["error"]
    assert token not in log and token.split(".")[2] not in log
    assert shot.stat().st_size > 10_000
