"""Derived blocks: CRAM re-cuts that would take a ticket's JSON past `max_inline_bytes` are
served through /data instead, recomputed there from what their url names (file version,
container, selection) — the same records the inline form would have held, in canonical
bytes: encoded by a writer of their own, so every worker and every fetch gives the same ones
(by default the inline form is too; with `cram_reproducible = false` it comes from a writer
kept open, cram_encoder.py, in other bytes).

Checked at engine level (every ticket reassembled and compared with pysam's `fetch`, whole
record list, in order), through Flask with and without signed urls (tampering: 403 with
auth, 404 without; a changed file: 404), and end to end with gunicorn and samtools.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote, unquote, urlparse

import pytest
from conftest import Server, free_port, reassemble, shared
from test_cram_exact import (
    HTSNEXUS,
    Original,
    check,
    inline_only,
    make_exact_bam,
    query,
    random_regions,
    samtools,
)

from htsgetr.app import create_app
from htsgetr.config import Config, LocationConfig, for_data_dir, load_config
from htsgetr.engine import Htsget
from htsgetr.formats import cram_recode
from htsgetr.formats.base import ByteRange, Inline
from htsgetr.formats.cram_layout import EOF_CONTAINER_V3, parse_header
from htsgetr.formats.cram_recode import Selection
from htsgetr.formats.cram_reference import coding_header
from htsgetr.formats.derived import (
    CRAM_PREFIX,
    Deferred,
    Recut,
    bound_inline,
    parse_derived,
    undeferred,
)
from htsgetr.protocol import Class, Endpoint, Format, NotFound, PermissionDenied, Query, Region

pytestmark = pytest.mark.skipif(shutil.which("samtools") is None, reason="samtools not installed")

BUSY = ["chr1", "chr2", "chr3"]
#: small enough that most multi-region tickets of the generated CRAM need derived blocks
BOUND = 4_000


@pytest.fixture(scope="module")
def ddir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("derived")
    bam = make_exact_bam(d / "source.bam", d / "ref.fa", seed=21, n_reads=3000)
    (d / "cohort").mkdir()
    samtools("view", "-C", "--output-fmt-option", "version=3.1", "--output-fmt-option",
             "no_ref=1", "--output-fmt-option", "seqs_per_slice=150",
             "-o", str(d / "cohort" / "reads.cram"), str(bam))
    samtools("index", str(d / "cohort" / "reads.cram"))
    return d


@pytest.fixture(scope="module")
def original(ddir: Path) -> Original:
    return Original(ddir / "cohort" / "reads.cram", None)


def config_for(ddir: Path, bound: int) -> Config:
    """IDs cohort/<name> in a named location, so derived urls carry its mount."""
    return Config(
        locations=[LocationConfig(name="cohort", regex="cohort/(.*)", substitution="$1",
                                  root=str(ddir / "cohort"))],
        max_inline_bytes=bound,
    )


def engine_payload(engine: Htsget, q: Query, root: Path) -> tuple[bytes, list[dict[str, Any]]]:
    """Reassemble at engine level: data: urls decoded, ranges read, derived blocks computed
    by the engine as /data computes them."""
    urls = engine.ticket(q).to_json()["htsget"]["urls"]
    parts = []
    for block in urls:
        url = block["url"]
        if url.startswith("data:;base64,"):
            parts.append(base64.b64decode(url[len("data:;base64,"):]))
            continue
        path = unquote(urlparse(url).path.split("/data/", 1)[1])
        if path.startswith(CRAM_PREFIX + "/"):
            assert "headers" not in block
            parts.append(engine.derived(path))
            continue
        first, last = (int(x) for x in block["headers"]["Range"].split("=")[1].split("-"))
        with open(root / path.split("/", 1)[1], "rb") as f:  # "~cohort/<key>"
            f.seek(first)
            parts.append(f.read(last - first + 1))
    return b"".join(parts), urls


def derived_urls(urls: list[dict[str, Any]]) -> list[str]:
    return [u["url"] for u in urls if f"/data/{CRAM_PREFIX}/" in u["url"]]


def inline_chars(urls: list[dict[str, Any]]) -> int:
    return sum(len(u["url"]) for u in urls if u["url"].startswith("data:"))


# --------------------------------------------------------------------------- engine


def test_recuts_past_the_bound_are_derived_and_exact(
    ddir: Path, original: Original, tmp_path: Path
) -> None:
    """Random region sets (several regions, `*`, whole references): the JSON stays under
    the bound, re-cuts past it are derived blocks, every ticket reassembles to exactly
    htslib's records, byte for byte the payload of an unbounded ticket; a fresh engine
    (another worker) computes the same derived bytes."""
    bounded = Htsget(config_for(ddir, BOUND))
    unbounded = Htsget(config_for(ddir, 1 << 30))
    root = ddir / "cohort"
    rng = random.Random(7)
    with_derived = 0
    for i in range(24):
        regions = random_regions(rng, original.lengths, BUSY)
        regions += tuple(random_regions(rng, original.lengths, BUSY))  # multi-region POSTs
        if i % 6 == 0:
            regions += (Region("*"),)
        q = query("cohort/reads", regions, exact=i % 2 == 0)
        text = json.dumps(bounded.ticket(q).to_json())
        payload, urls = engine_payload(bounded, q, root)
        assert len(text) <= BOUND or not any(u["url"].startswith("data:") for u in urls[1:-1])
        assert inline_chars(urls) <= BOUND
        check(payload, urls, original, original.expected(regions), tmp_path)
        whole, all_inline = engine_payload(unbounded, q, root)
        assert not derived_urls(all_inline)
        check(whole, all_inline, original, original.expected(regions), tmp_path)
        assert whole == payload  # cram_reproducible (the default): the same bytes too
        if derived_urls(urls):
            with_derived += 1
            fresh = Htsget(config_for(ddir, BOUND))
            assert derived_urls(fresh.ticket(q).to_json()["htsget"]["urls"]) == derived_urls(urls)
            assert [fresh.derived(ref_path(u)) for u in derived_urls(urls)] == [
                bounded.derived(ref_path(u)) for u in derived_urls(urls)]
    assert with_derived >= 8


def test_derived_bytes_are_canonical_and_hold_the_inline_records(
    ddir: Path, original: Original
) -> None:
    """Container by container: what /data computes for a derived url holds the records of
    the re-cut the handler made for the inline form (`Recut.data`), and is the same bytes
    from every engine (worker) that computes it, kept writers or not."""
    everything = Htsget(config_for(ddir, 0))  # every re-cut derived
    regions = tuple(Region(n, s, s + 3_000) for n, s in
                    [("chr1", 5_000), ("chr1", 31_000), ("chr2", 12_345), ("chr3", 7_000)])
    q = query("cohort/reads", regions, exact=False)
    source = everything.locate("cohort/reads", Format.CRAM)
    recuts = [p for p in everything.handler(Format.CRAM).pieces(source, q) if isinstance(p, Recut)]
    urls = derived_urls(everything.ticket(q).to_json()["htsget"]["urls"])
    assert len(urls) == len(recuts) >= 4
    version, _, text = parse_header(original.path.read_bytes())
    head = cram_recode.file_head(version, coding_header(text))
    for url, recut in zip(urls, recuts):
        ref = parse_derived(unquote(urlparse(url).path.split("/data/", 1)[1]))
        assert ref is not None and (ref.start, ref.end, ref.token) == (
            recut.start, recut.end, recut.token)
        assert ref.data_path == "~cohort/reads.cram"
        derived = Htsget(config_for(ddir, 0)).derived(ref_path(url))
        assert Htsget(config_for(ddir, 0)).derived(ref_path(url)) == derived
        assert inline_only(head + derived + EOF_CONTAINER_V3) == inline_only(
            head + recut.data + EOF_CONTAINER_V3) != []
        assert derived == recut.data  # cram_reproducible (the default): the same bytes too


def ref_path(url: str) -> str:
    return unquote(urlparse(url).path.split("/data/", 1)[1])


def test_json_stays_under_the_default_bound_htsnexus(tmp_path: Path) -> None:
    """The htsnexus CRAM (10,000-record containers): a POST of many regions whose re-cuts
    hold several MB stays under the default 256 KiB, and is exact."""
    path = shared("cram", f"{HTSNEXUS}.cram")
    engine = Htsget(for_data_dir(str(path.parent)))
    assert engine.config.max_inline_bytes == 256 * 1024
    original = Original(path, None)
    rng = random.Random(3)
    spans = {"11": (5_000_000, 5_090_000), "20": (6_000_000, 6_090_000)}
    regions = [Region("*")]
    for _ in range(14):
        contig = rng.choice(["11", "20"])
        start = rng.randint(*spans[contig])
        regions.append(Region(contig, start, start + rng.choice([2_000, 20_000])))
    q = query(HTSNEXUS, tuple(regions), exact=False)
    ticket = engine.ticket(q).to_json()
    assert len(json.dumps(ticket)) <= 256 * 1024
    urls = ticket["htsget"]["urls"]
    assert derived_urls(urls) and inline_chars(urls) > 64 * 1024
    payload, urls = engine_payload_flat(engine, q, path.parent)
    check(payload, urls, original, original.expected(q.regions or ()), tmp_path)


def engine_payload_flat(engine: Htsget, q: Query, root: Path) -> tuple[bytes, list[dict]]:
    """`engine_payload` for a location without a mount (for_data_dir)."""
    urls = engine.ticket(q).to_json()["htsget"]["urls"]
    parts = []
    for block in urls:
        url = block["url"]
        if url.startswith("data:;base64,"):
            parts.append(base64.b64decode(url[len("data:;base64,"):]))
            continue
        path = ref_path(url)
        if "headers" not in block:
            parts.append(engine.derived(path))
            continue
        first, last = (int(x) for x in block["headers"]["Range"].split("=")[1].split("-"))
        with open(root / path, "rb") as f:
            f.seek(first)
            parts.append(f.read(last - first + 1))
    return b"".join(parts), urls


# --------------------------------------------------------------------------- HTTP


def app_config(ddir: Path, tmp_path: Path, auth: bool) -> Config:
    text = (f'max_inline_bytes = 2000\n[[locations]]\nname = "cohort"\n'
            f'regex = "cohort/(.*)"\nroot = "{ddir / "cohort"}"\n')
    if auth:
        from authkit import Key

        pub = tmp_path / "key.pub"
        pub.write_bytes(Key("RSA", "k").public_pem())
        text += (f'[auth]\njwt = {{ kind = "public_key", path = "{pub}" }}\n'
                 'public_endpoints = ["reads", "service-info"]\n'
                 '[auth.data_urls]\nsecret = "derived-test-secret"\n')
    (tmp_path / "htsget.toml").write_text(text)
    return load_config(str(tmp_path / "htsget.toml"), env={})


REGIONS = "format=CRAM&referenceName=chr1&start=20000&end=26000"


def local(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[1]


def tampered(path: str) -> dict[str, str]:
    """Paths below /data/ that differ from a derived one in one part each."""
    prefix, tag, span, token, rest = path.split("/", 4)
    start, end = (int(x) for x in span.split("-"))
    ref, intervals = token.split(":", 1)
    beg, stop = (int(x) for x in intervals.split(",")[0].split("-"))
    return {
        "version": f"{prefix}/{'0' * 16}/{span}/{token}/{rest}",
        "container start": f"{prefix}/{tag}/{start + 1}-{end}/{token}/{rest}",
        "container end": f"{prefix}/{tag}/{start}-{end - 1}/{token}/{rest}",
        "wider selection": f"{prefix}/{tag}/{span}/{ref}:0-{stop}/{rest}",
        "another file": f"{prefix}/{tag}/{span}/{token}/~cohort/other.cram",
        "non-canonical": f"{prefix}/{tag}/{span}/{ref}:{beg}-{stop},{beg}-{stop}/{rest}",
        "reversed": f"{prefix}/{tag}/{span}/{ref}:{stop}-{beg}/{rest}",
        "leading zero": f"{prefix}/{tag}/0{span}/{token}/{rest}",
    }


def test_http_without_auth(ddir: Path, original: Original, tmp_path: Path) -> None:
    """/data serves derived blocks (GET, HEAD, Range, no-store); a url changed in any part,
    or naming a file changed since, is a 404 — nothing recomputed from other input."""
    client = create_app(app_config(ddir, tmp_path, auth=False)).test_client()
    ticket = client.get(f"/reads/cohort/reads?{REGIONS}").get_json()
    urls = ticket["htsget"]["urls"]
    derived = derived_urls(urls)
    assert derived and len(json.dumps(ticket)) <= 2000 + 1000
    engine = Htsget(app_config(ddir, tmp_path, auth=False))
    parts = []
    for block in urls:
        if block["url"].startswith("data:"):
            parts.append(base64.b64decode(block["url"][len("data:;base64,"):]))
            continue
        resp = client.get("/" + local(block["url"]), headers=block.get("headers", {}))
        assert resp.status_code in (200, 206), resp.get_data(as_text=True)
        assert resp.headers["Cache-Control"] == "no-store"
        parts.append(resp.data)
    check(b"".join(parts), urls, original,
          original.expected((Region("chr1", 20_000, 26_000),)), tmp_path)
    path = ref_path(derived[0])
    body = engine.derived(path)
    url = "/data/" + quote(path, safe="/:,;*")
    head = client.head(url)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(body))
    part = client.get(url, headers={"Range": "bytes=10-99"})
    assert part.status_code == 206 and part.data == body[10:100]
    assert part.headers["Content-Range"] == f"bytes 10-99/{len(body)}"
    for what, other in tampered(path).items():
        resp = client.get("/data/" + quote(other, safe="/:,;*"))
        assert resp.status_code == 404, what
        assert resp.get_json()["htsget"]["error"] == "NotFound"
    # the file changes (same bytes, new mtime): its derived urls are gone
    cram = ddir / "cohort" / "reads.cram"
    st = cram.stat()
    os.utime(cram, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        resp = client.get(url)
        assert resp.status_code == 404 and "changed" in resp.get_json()["htsget"]["message"]
    finally:
        os.utime(cram, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert client.get(url).status_code == 200


def test_http_with_signed_urls(ddir: Path, original: Original, tmp_path: Path) -> None:
    """With auth on, derived urls are signed like every /data url: as listed they work
    with no token; any change to the path, a Range the ticket did not list, or no
    signature is a 403."""
    client = create_app(app_config(ddir, tmp_path, auth=True)).test_client()
    ticket = client.get(f"/reads/cohort/reads?{REGIONS}").get_json()
    urls = ticket["htsget"]["urls"]
    derived = derived_urls(urls)
    assert derived and all("sig=" in u and "exp=" in u for u in derived)
    parts = []
    for block in urls:
        if block["url"].startswith("data:"):
            parts.append(base64.b64decode(block["url"][len("data:;base64,"):]))
            continue
        resp = client.get("/" + local(block["url"]), headers=block.get("headers", {}))
        assert resp.status_code in (200, 206), resp.get_data(as_text=True)
        parts.append(resp.data)
    check(b"".join(parts), urls, original,
          original.expected((Region("chr1", 20_000, 26_000),)), tmp_path)
    signed = local(derived[0])
    path, query_string = ref_path("http://h/" + signed), signed.split("?", 1)[1]
    for what, other in tampered(path).items():
        resp = client.get("/data/" + quote(other, safe="/:,;*") + "?" + query_string)
        assert resp.status_code == 403, what
        assert resp.get_json()["htsget"]["error"] == "PermissionDenied"
    assert client.get("/" + signed.split("?")[0]).status_code == 403
    assert client.get("/" + signed, headers={"Range": "bytes=0-10"}).status_code == 403
    assert client.get("/" + signed).status_code == 200


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def gunicorn(ddir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    conf = tmp_path_factory.mktemp("conf") / "htsget.toml"
    conf.write_text(f'max_inline_bytes = 3000\n[[locations]]\nname = "cohort"\n'
                    f'regex = "cohort/(.*)"\nroot = "{ddir / "cohort"}"\n')
    port = free_port()
    srv = Server(["--config", str(conf), "--port", str(port), "--workers", "2"], port).start()
    yield srv
    srv.stop()


def test_gunicorn_and_samtools(gunicorn: Server, original: Original, tmp_path: Path) -> None:
    """Two workers (a derived url is computed by whichever gets it); htslib fetches the
    ticket itself, derived urls included, and gets exactly the region's records."""
    import requests

    body = {"format": "CRAM", "regions": [
        {"referenceName": "chr1", "start": 10_000, "end": 16_000},
        {"referenceName": "chr3", "start": 2_000, "end": 9_000},
        {"referenceName": "*"}]}
    resp = requests.post(f"{gunicorn.url}/reads/cohort/reads", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    ticket = resp.json()
    assert derived_urls(ticket["htsget"]["urls"])
    regions = (Region("chr1", 10_000, 16_000), Region("chr3", 2_000, 9_000), Region("*"))
    for _ in range(3):  # whichever worker answers
        check(reassemble(ticket), ticket["htsget"]["urls"], original,
              original.expected(regions), tmp_path)
    url = f"{gunicorn.url}/reads/cohort/reads?format=CRAM&referenceName=chr2&start=3000&end=9000"
    out = subprocess.run(["samtools", "view", url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ticket = requests.get(url, timeout=60).json()
    assert derived_urls(ticket["htsget"]["urls"])
    expected = [line.split("\t|")[0] for line in original.expected((Region("chr2", 3000, 9000),))]
    assert out.stdout.splitlines() == expected


# --------------------------------------------------------------------------- units


def test_bound_inline_units() -> None:
    """Smallest re-cuts inline first, while the JSON fits; adjacent inline ones joined;
    other inline pieces stay; nothing changes without re-cuts."""
    def recut(n: int, start: int) -> Recut:
        return Recut(bytes(n), Class.BODY, start, start + 10, "0:1-2")

    def chars(part: object) -> int:
        return 100

    head = ByteRange(0, 10, Class.HEADER)
    eof = Inline(b"E" * 38, Class.BODY)
    pieces = [head, recut(3000, 10), recut(300, 20), recut(30, 30), ByteRange(40, 50, Class.BODY),
              recut(30_000, 50), eof]
    assert bound_inline([head, eof], 0, chars) == [head, eof]
    out = bound_inline(pieces, 10**9, chars)  # everything inline: three joined
    assert [type(p).__name__ for p in out] == ["ByteRange", "Inline", "ByteRange", "Inline",
                                               "Inline"]
    assert isinstance(out[1], Inline) and len(out[1].data) == 3330
    out = bound_inline(pieces, 1_100, chars)  # room for the two smallest only
    kinds = [(type(p).__name__, len(p.data) if isinstance(p, Inline) else 0) for p in out]
    assert kinds == [("ByteRange", 0), ("Derived", 0), ("Inline", 330), ("ByteRange", 0),
                     ("Derived", 0), ("Inline", 38)]
    out = bound_inline(pieces, 0, chars)
    assert [type(p).__name__ for p in out] == ["ByteRange", "Derived", "Derived", "Derived",
                                               "ByteRange", "Derived", "Inline"]
    # a re-cut whose url would be too long stays inline, whatever the bound
    out = bound_inline(pieces, 0, chars, lambda r: r.start != 50)
    assert [type(p).__name__ for p in out] == ["ByteRange", "Derived", "Derived", "Derived",
                                               "ByteRange", "Inline", "Inline"]
    assert isinstance(out[5], Inline) and len(out[5].data) == 30_000


def test_bound_inline_deferred_units() -> None:
    """A re-cut deferred past the ticket's budget (`Deferred`) is a derived block whatever
    the bound, and is computed now only where its url would be too long; computed, it may
    hold nothing (left out) or be a whole container."""
    made: list[int] = []

    def deferred(start: int, result: object) -> Deferred:
        def compute() -> object:
            made.append(start)
            return result
        return Deferred(b"", Class.BODY, start, start + 10, "0:1-2", compute=compute)

    def chars(part: object) -> int:
        return 100

    head = ByteRange(0, 10, Class.HEADER)
    whole = ByteRange(30, 40, Class.BODY)
    pieces = [head, deferred(10, Recut(b"R" * 50, Class.BODY, 10, 20, "0:1-2")),
              deferred(20, None), deferred(30, whole), Inline(b"E", Class.BODY)]
    out = bound_inline(pieces, 10**9, chars)
    assert [type(p).__name__ for p in out] == ["ByteRange", "Derived", "Derived", "Derived",
                                               "Inline"]
    assert made == []
    out = bound_inline(pieces, 10**9, chars, lambda r: r.start == 20)
    assert [type(p).__name__ for p in out] == ["ByteRange", "Inline", "Derived", "ByteRange",
                                               "Inline"]
    assert out[1] == Inline(b"R" * 50, Class.BODY) and out[3] == whole
    assert made == [10, 30]
    # no derived blocks (a Crypt4GH ticket): each deferred re-cut as its whole container,
    # or refused where a whole container is not allowed
    fallback = [head, Deferred(b"", Class.BODY, 10, 20, "0:1-2", whole=whole)]
    assert undeferred(fallback) == [head, whole]
    with pytest.raises(PermissionDenied, match="cannot be restricted"):
        undeferred(pieces)


def test_parse_derived_is_strict() -> None:
    good = f"{CRAM_PREFIX}/{'a' * 16}/100-200/0:5-9;*/~m/x.cram"
    ref = parse_derived(good)
    assert ref is not None and (ref.start, ref.end, ref.token, ref.data_path) == (
        100, 200, "0:5-9;*", "~m/x.cram")
    for bad in [good.replace("100-200", "0100-200"), good.replace("100-200", "200-100"),
                good.replace("a" * 16, "A" * 16), good.replace("a" * 16, "a" * 15),
                good.replace("/~m/x.cram", ""), good.replace("0:5-9;*", ""),
                good.replace(CRAM_PREFIX, "~~bam"), good.replace("0:5-9;*", "0:" + "1-2," * 5000)]:
        assert parse_derived(bad) is None, bad


def test_selection_clip_and_token() -> None:
    """Clipping to a container's entries keeps exactly the records it wants (random
    records inside the entries, htslib's overlap rule); tokens are canonical."""
    rng = random.Random(5)
    for _ in range(300):
        spans = []
        for _ in range(rng.randint(1, 6)):
            ref, beg = rng.choice([0, 1, 2]), rng.randint(0, 5_000)
            spans.append((ref, beg, beg + rng.choice([0, 1, 10, 500, 3_000])))
        selection = Selection.of(spans, unplaced=rng.random() < 0.3)
        entries = []
        for _ in range(rng.randint(1, 3)):
            ref, beg = rng.choice([0, 1, -1]), rng.randint(0, 5_000)
            entries.append((ref, beg, beg + rng.randint(1, 2_000)))
        clipped = selection.clip(entries)
        assert Selection.parse(clipped.token()) == clipped or clipped.empty
        assert clipped.clip(entries).token() == clipped.token()
        for ref, beg, end in entries:
            for _ in range(40):
                pos = rng.randint(beg, end - 1)
                stop = rng.randint(pos + 1, end)
                assert clipped.wants(ref, pos, stop) == selection.wants(ref, pos, stop)
    assert Selection.parse("0:1-5,3-9") is None and Selection.parse("0:5-1") is None
    assert Selection.parse("1:1-2;0:3-4") is None and Selection.parse("*;0:1-2") is None
    assert Selection.parse("0:1-2;*") is not None


def test_only_files_a_ticket_could_name(ddir: Path, tmp_path: Path) -> None:
    """A derived url names a CRAM its location serves: not a hidden file, another
    format, or a key its substitution cannot produce — also where /data serves no bytes
    (a redirect url location)."""
    engine = Htsget(config_for(ddir, 0))
    q = query("cohort/reads", (Region("chr1", 20_000, 21_000),), exact=False)
    url = derived_urls(engine.ticket(q).to_json()["htsget"]["urls"])[0]
    path = ref_path(url)
    assert engine.derived(path)
    prefix = path[: -len("~cohort/reads.cram")]
    (ddir / "cohort" / ".hidden.cram").write_bytes((ddir / "cohort" / "reads.cram").read_bytes())
    for data_path in ["~cohort/.hidden.cram", "~cohort/reads.cram.crai", "~cohort/../reads.cram",
                      "~nope/reads.cram", "reads.cram", "~cohort/source.bam"]:
        with pytest.raises(NotFound):
            engine.derived(prefix + data_path)
    remote = Htsget(Config(locations=[LocationConfig(
        backend="url", url="http://127.0.0.1:9/", regex="pub/([a-z]+)", substitution="$1")]))
    cram = (Format.CRAM,)
    assert remote._derived_source("reads.cram", cram) is not None
    for data_path in ["read5.cram", ".x.cram", "reads.bam", "~1/reads.cram"]:
        assert remote._derived_source(data_path, cram) is None, data_path
    bgzf = (Format.BAM, Format.VCF, Format.BCF)
    assert remote._derived_source("reads.bam", bgzf) is not None
    for data_path in ["reads.cram", "reads.bam.bai", ".x.bam", "read5.vcf.gz"]:
        assert remote._derived_source(data_path, bgzf) is None, data_path


@pytest.mark.parametrize("n", [200, 700])
def test_many_regions_in_one_container(
    ddir: Path, original: Original, tmp_path: Path, n: int
) -> None:
    """A POST of hundreds of one-base regions: a derived url spells them all (200: served,
    its selection parsed back); past what a request line holds (700), the re-cut stays
    inline rather than becoming a url no server would read."""
    engine = Htsget(config_for(ddir, 0))
    regions = tuple(Region("chr1", s, s + 1) for s in range(6_000, 6_000 + 3 * n, 3))
    q = query("cohort/reads", regions, exact=False)
    payload, urls = engine_payload(engine, q, ddir / "cohort")
    check(payload, urls, original, original.expected(regions), tmp_path)
    derived = derived_urls(urls)
    assert all(len(urlparse(u).path) < 3100 for u in derived)
    if n == 200:
        assert derived
    else:
        assert any(u["url"].startswith("data:") for u in urls[1:-1])


def test_restricted_reference_free_derived(ddir: Path, original: Original, tmp_path: Path
                                           ) -> None:
    """An authorization rule (exact) with derived blocks: the same records."""
    engine = Htsget(config_for(ddir, 0))
    allowed = (Region("chr2", 1_000, 9_000), Region("chr3", 0, 700))
    q = Query(Endpoint.READS, "cohort/reads", Format.CRAM, allowed=allowed)
    payload, urls = engine_payload(engine, q, ddir / "cohort")
    assert derived_urls(urls)
    check(payload, urls, original, original.expected(allowed), tmp_path)
