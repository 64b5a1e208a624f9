"""CRAM + CRAI: tickets reassemble to valid CRAM files holding exactly htslib's records.

Generated CRAM 3.0, 3.1, 2.1 and a small-container 3.0 file (so regions span several
containers), plus the htsnexus reference CRAM where ../shared/data is present. Every region
check compares the WHOLE reassembled record list with pysam's `fetch` (equality, in file
order): boundary containers are re-encoded with only the region's records (inline, or as
derived blocks through /data). More on exactness: test_cram_exact.py, test_derived_blocks.py.
"""

from __future__ import annotations

import base64
import bz2
import collections
import gzip
import lzma
import random
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import unquote, urlparse

import pysam
import pytest
import requests
from conftest import Server, free_port, make_bam, reassemble, serve_dir, shared

from htsgetr.config import for_data_dir
from htsgetr.engine import Htsget
from htsgetr.formats.cram import CramHandler
from htsgetr.formats.cram_layout import (
    EOF_CONTAINER_V2,
    EOF_CONTAINER_V3,
    parse_block,
    parse_container_header,
    read_itf8,
    read_ltf8,
)
from htsgetr.index.crai import Crai
from htsgetr.protocol import (
    Class,
    Endpoint,
    Format,
    InvalidInput,
    NotFound,
    Query,
    Region,
    parse_get,
)

pytestmark = pytest.mark.skipif(shutil.which("samtools") is None, reason="samtools not installed")

REFS = ["chr1", "chr2", "chrEmpty", "chr3"]
GENERATED = ["v30", "v31", "small", "v21", "slices"]


def samtools(*args: str) -> str:
    out = subprocess.run(["samtools", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def cram_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cram")
    bam = make_bam(d / "source.bam", seed=11)
    variants = {
        "v30": ["--output-fmt", "cram,version=3.0,no_ref=1"],
        "v31": ["--output-fmt", "cram,version=3.1,no_ref=1"],
        "v21": ["--output-fmt", "cram,version=2.1,no_ref=1"],
        "small": ["--output-fmt", "cram,version=3.0,no_ref=1,seqs_per_slice=100"],
        # several slices per container: several CRAI lines share a container offset
        "slices": ["--output-fmt",
                   "cram,version=3.1,no_ref=1,seqs_per_slice=50,slices_per_container=4"],
    }
    for name, opts in variants.items():
        samtools("view", "-C", *opts, "-o", str(d / f"{name}.cram"), str(bam))
        samtools("index", str(d / f"{name}.cram"))
    # an index named <stem>.crai instead of <file>.crai
    shutil.copy(d / "v30.cram", d / "stem.cram")
    shutil.copy(d / "v30.cram.crai", d / "stem.crai")
    # a CRAM with no CRAI
    shutil.copy(d / "v30.cram", d / "noindex.cram")
    return d


@pytest.fixture(scope="module")
def engine(cram_dir: Path) -> Htsget:
    return Htsget(for_data_dir(str(cram_dir)))


# --------------------------------------------------------------------------- helpers


def engine_payload(engine: Htsget, query: Query, root: Path) -> tuple[bytes, list[dict]]:
    """Reassemble a ticket at engine level: inline blocks decoded, ranges read from disk,
    derived blocks computed by the engine as /data would."""
    ticket = engine.ticket(query).to_json()
    out = []
    for block in ticket["htsget"]["urls"]:
        url = block["url"]
        if url.startswith("data:"):
            assert url.startswith("data:;base64,")
            out.append(base64.b64decode(url[len("data:;base64,") :]))
            continue
        key = unquote(urlparse(url).path.split("/data/", 1)[1])
        if "headers" not in block:  # a derived block
            out.append(engine.derived(key))
            continue
        first, last = block["headers"]["Range"].split("=")[1].split("-")
        with open(root / key, "rb") as f:
            f.seek(int(first))
            out.append(f.read(int(last) - int(first) + 1))
    return b"".join(out), ticket["htsget"]["urls"]


def records(path: Path) -> list[str]:
    with pysam.AlignmentFile(str(path), "rc", check_sq=False) as f:
        return [r.to_string() for r in f.fetch(until_eof=True)]


def region_records(path: Path, contig: str, start: Optional[int], end: Optional[int]) -> list[str]:
    if contig == "*":
        with pysam.AlignmentFile(str(path), "rc", check_sq=False) as f:
            return [r.to_string() for r in f.fetch(until_eof=True) if r.reference_id == -1]
    with pysam.AlignmentFile(str(path), "rc") as f:
        return [r.to_string() for r in f.fetch(contig, start, end)]


def union_records(path: Path, regions: list[Region]) -> list[str]:
    """The records of several region queries, each once, in file order (what one ticket
    for all of them must hold)."""
    wanted: set[str] = set()
    for r in regions:
        wanted |= set(region_records(path, r.reference_name, r.start, r.end))
    return [r for r in records(path) if r in wanted]


def header_text(path: Path) -> str:
    return samtools("view", "-H", "--no-PG", str(path))


def check_payload(
    payload: bytes, tmp: Path, original: Path, expected: list[str], name: str = "payload"
) -> list[str]:
    """A valid CRAM: original header, exactly the expected records in file order (no
    neighbour of the region, none twice), and exactly one EOF container at the end."""
    out = tmp / f"{name}.cram"
    out.write_bytes(payload)
    eof = EOF_CONTAINER_V2 if payload[4] == 2 else EOF_CONTAINER_V3
    assert payload.endswith(eof)
    assert not payload[: -len(eof)].endswith(eof), "EOF container sent twice"
    samtools("quickcheck", str(out))
    assert header_text(out) == header_text(original)
    got = records(out)
    counts = collections.Counter(got)
    all_counts = collections.Counter(records(original))
    extra = [r for r, n in counts.items() if n > all_counts[r]]
    assert not extra, f"{len(extra)} records more often than in the original"
    missing = [r for r in expected if r not in counts]
    assert not missing, f"{len(missing)} of {len(expected)} region records missing"
    outside = collections.Counter(got) - collections.Counter(expected)
    assert not outside, f"{sum(outside.values())} records outside the regions"
    assert got == expected, "records out of file order"
    return got


def header_bytes(path: Path, engine: Htsget, id: str) -> bytes:
    source = engine.locate(id, Format.CRAM)
    cram = CramHandler().open(source)
    return path.read_bytes()[: cram.header_end]


def reads(
    id: str, regions: Optional[list[Region]] = None, klass: Optional[Class] = None
) -> Query:
    regs = None if regions is None else tuple(regions)
    return Query(Endpoint.READS, id, Format.CRAM, klass, regs)


# --------------------------------------------------------------------------- primitives


def test_eof_constant_matches_samtools(cram_dir: Path) -> None:
    for name in ("v30", "v31", "small"):
        assert (cram_dir / f"{name}.cram").read_bytes()[-38:] == EOF_CONTAINER_V3
    assert (cram_dir / "v21.cram").read_bytes()[-30:] == EOF_CONTAINER_V2
    assert len(EOF_CONTAINER_V3) == 38


@pytest.mark.parametrize("data,value,size", [
    (b"\x00", 0, 1),
    (b"\x7f", 127, 1),
    (b"\x80\x80", 128, 2),
    (b"\xbf\xff", 0x3FFF, 2),
    (b"\xc0\x40\x00", 0x4000, 3),
    (b"\xe0\x45\x4f\x46", 0x454F46, 4),
    (b"\xf0\x10\x00\x00\x00", 0x01000000, 5),
    (b"\xff\xff\xff\xff\x0f", -1, 5),
    (b"\xff\xff\xff\xff\x0e", -2, 5),
    (b"\xf7\xff\xff\xff\x0f", (1 << 31) - 1, 5),
])
def test_itf8(data: bytes, value: int, size: int) -> None:
    assert read_itf8(data + b"junk", 0) == (value, size)


@pytest.mark.parametrize("data,value,size", [
    (b"\x05", 5, 1),
    (b"\x81\x00", 256, 2),
    (b"\xc1\x00\x00", 1 << 16, 3),
    (b"\xe1\x00\x00\x00", 1 << 24, 4),
    (b"\xf1\x00\x00\x00\x00", 1 << 32, 5),
    (b"\xf9" + b"\x00" * 5, 1 << 40, 6),
    (b"\xfd" + b"\x00" * 6, 1 << 48, 7),
    (b"\xfe\x01" + b"\x00" * 6, 1 << 48, 8),
    (b"\xff" + b"\x01" + b"\x00" * 7, 1 << 56, 9),
    (b"\xff" * 9, -1, 9),
])
def test_ltf8(data: bytes, value: int, size: int) -> None:
    assert read_ltf8(data, 0) == (value, size)


def test_crai_parse_plain_and_gzip(cram_dir: Path) -> None:
    raw = (cram_dir / "small.cram.crai").read_bytes()
    gz = Crai.parse(raw)
    plain = Crai.parse(subprocess.run(["gzip", "-dc"], input=raw, capture_output=True).stdout)
    assert gz.container_offsets == plain.container_offsets
    assert len(gz.container_offsets) > 10


def test_crai_queries() -> None:
    crai = Crai.parse(
        b"0\t1\t100\t500\t10\t20\n"
        b"0\t90\t200\t900\t10\t20\n"
        b"1\t50\t10\t900\t30\t20\n"  # same container, another reference
        b"-1\t0\t1\t1500\t10\t20\n"
    )
    assert crai.container_offsets == [500, 900, 1500]
    assert crai.containers(0, 0, 10) == {500}
    assert crai.containers(0, 95, 96) == {500, 900}
    assert crai.containers(0, 400, 500) == set()
    assert crai.containers(1, 0, 1000) == {900}
    assert crai.containers(2, 0, 1000) == set()
    assert crai.containers(-1, 0, 0) == {1500}
    assert crai.next_container(500, 9999) == 900 and crai.next_container(1500, 9999) == 9999
    # an old-style multi-reference line (-2) may hold anything
    multi = Crai.parse(b"0\t1\t100\t500\t10\t20\n-2\t0\t0\t900\t10\t20\n")
    assert multi.containers(0, 5000, 6000) == {900}
    assert multi.containers(-1, 0, 0) == {900}


# --------------------------------------------------------------------------- whole file


@pytest.mark.parametrize("name", GENERATED)
def test_whole_file_is_the_file(engine: Htsget, cram_dir: Path, name: str) -> None:
    payload, urls = engine_payload(engine, reads(name), cram_dir)
    assert payload == (cram_dir / f"{name}.cram").read_bytes()
    assert [u["class"] for u in urls] == ["header", "body", "body"]
    ticket = engine.ticket(reads(name))
    import hashlib

    assert ticket.md5 == hashlib.md5(payload).hexdigest()


@pytest.mark.parametrize("name", GENERATED)
def test_header_class(engine: Htsget, cram_dir: Path, tmp_path: Path, name: str) -> None:
    original = cram_dir / f"{name}.cram"
    payload, urls = engine_payload(engine, reads(name, klass=Class.HEADER), cram_dir)
    assert all(u["class"] == "header" for u in urls)
    got = check_payload(payload, tmp_path, original, [])
    assert got == []
    eof = EOF_CONTAINER_V2 if name == "v21" else EOF_CONTAINER_V3
    assert payload == header_bytes(original, engine, name) + eof
    assert "@SQ\tSN:chrEmpty" in header_text(tmp_path / "payload.cram")


def test_stem_crai_and_missing_index(engine: Htsget, cram_dir: Path, tmp_path: Path) -> None:
    payload, _ = engine_payload(engine, reads("stem", [Region("chr2", 0, 5000)]), cram_dir)
    expected = region_records(cram_dir / "v30.cram", "chr2", 0, 5000)
    check_payload(payload, tmp_path, cram_dir / "v30.cram", expected)
    # without a CRAI: whole file and header still work, regions do not
    payload, _ = engine_payload(engine, reads("noindex"), cram_dir)
    assert payload == (cram_dir / "noindex.cram").read_bytes()
    payload, _ = engine_payload(engine, reads("noindex", klass=Class.HEADER), cram_dir)
    assert check_payload(payload, tmp_path, cram_dir / "v30.cram", []) == []
    with pytest.raises(NotFound):
        engine.ticket(reads("noindex", [Region("chr1")]))


def itf8(value: int) -> bytes:
    v = value & 0xFFFFFFFF
    if v < 0x80:
        return bytes([v])
    if v < 0x4000:
        return bytes([0x80 | v >> 8, v & 0xFF])
    if v < 0x200000:
        return bytes([0xC0 | v >> 16, (v >> 8) & 0xFF, v & 0xFF])
    if v < 0x10000000:
        return bytes([0xE0 | v >> 24, (v >> 16) & 0xFF, (v >> 8) & 0xFF, v & 0xFF])
    return bytes([0xF0 | (v >> 28), (v >> 20) & 0xFF, (v >> 12) & 0xFF, (v >> 4) & 0xFF,
                  v & 0x0F])


def crc(data: bytes) -> bytes:
    return struct.pack("<I", zlib.crc32(data) & 0xFFFFFFFF)


@pytest.mark.parametrize("method", [0, 1, 2, 3])
def test_header_block_compression(cram_dir: Path, tmp_path: Path, method: int) -> None:
    """The SAM header block raw, gzip, bzip2 or lzma (samtools writes gzip): rebuild the
    header container of a CRAM with each, shift the CRAI, and check tickets."""
    original = (cram_dir / "small.cram").read_bytes()
    container = parse_container_header(original, 26, 3, 26)
    _, _, raw, _ = parse_block(original, container.data_start, 3)
    packed = {0: raw, 1: gzip.compress(raw), 2: bz2.compress(raw), 3: lzma.compress(raw)}[method]
    block = bytes([method, 0]) + itf8(0) + itf8(len(packed)) + itf8(len(raw)) + packed
    block += crc(block)
    padding = bytes([0, 0]) + itf8(0) + itf8(100) + itf8(100) + bytes(100)
    padding += crc(padding)
    head = (struct.pack("<i", len(block) + len(padding)) + itf8(0) * 4 + b"\0\0"
            + itf8(2) + itf8(2) + itf8(0) + itf8(len(block)))
    head += crc(head)
    rebuilt = original[:26] + head + block + padding + original[container.end :]
    delta = len(rebuilt) - len(original)
    root = tmp_path / "data"
    root.mkdir()
    (root / "rebuilt.cram").write_bytes(rebuilt)
    lines = gzip.decompress((cram_dir / "small.cram.crai").read_bytes()).decode().splitlines()
    shifted = []
    for line in lines:
        f = line.split("\t")
        f[3] = str(int(f[3]) + delta)
        shifted.append("\t".join(f))
    (root / "rebuilt.cram.crai").write_bytes(gzip.compress(("\n".join(shifted) + "\n").encode()))
    assert header_text(root / "rebuilt.cram") == header_text(cram_dir / "small.cram")

    engine = Htsget(for_data_dir(str(root)))
    header, _ = engine_payload(engine, reads("rebuilt", klass=Class.HEADER), root)
    assert header == rebuilt[: 26 + len(head) + len(block) + len(padding)] + EOF_CONTAINER_V3
    payload, _ = engine_payload(engine, reads("rebuilt", [Region("chr3", 20_000, 40_000)]), root)
    expected = region_records(cram_dir / "small.cram", "chr3", 20_000, 40_000)
    check_payload(payload, tmp_path, cram_dir / "small.cram", expected)


# --------------------------------------------------------------------------- regions


@pytest.mark.parametrize("name", GENERATED)
def test_random_regions(engine: Htsget, cram_dir: Path, tmp_path: Path, name: str) -> None:
    original = cram_dir / f"{name}.cram"
    rng = random.Random(name)
    lengths = {"chr1": 250_000, "chr2": 120_000, "chrEmpty": 50_000, "chr3": 90_000}
    for i in range(30):
        ref = rng.choice(REFS)
        beg = rng.randint(0, lengths[ref] - 1)
        start: Optional[int] = beg
        end: Optional[int] = min(lengths[ref] + 1000, beg + rng.choice([1, 50, 2000, 40_000]))
        if i % 5 == 0:
            start, end = None, None
        elif i % 5 == 1:
            end = None
        payload, _ = engine_payload(engine, reads(name, [Region(ref, start, end)]), cram_dir)
        expected = region_records(original, ref, start, end)
        check_payload(payload, tmp_path, original, expected)


def test_small_containers_are_cut_exactly(engine: Htsget, cram_dir: Path, tmp_path: Path) -> None:
    original = cram_dir / "small.cram"
    crai = Crai.parse((cram_dir / "small.cram.crai").read_bytes())
    size = original.stat().st_size
    boundaries = set(crai.container_offsets) | {size - len(EOF_CONTAINER_V3)}
    query = reads("small", [Region("chr1", 60_000, 130_000)])
    payload, urls = engine_payload(engine, query, cram_dir)
    body = [u for u in urls if u["class"] == "body" and not u["url"].startswith("data:")]
    assert len(body) == 1  # adjacent containers are merged into one range
    first, last = (int(x) for x in body[0]["headers"]["Range"].split("=")[1].split("-"))
    assert first in boundaries and last + 1 in boundaries
    # several containers, but far fewer than the whole file
    inside = [o for o in crai.container_offsets if first <= o <= last]
    assert 1 < len(inside) < len(crai.container_offsets) // 2
    expected = region_records(original, "chr1", 60_000, 130_000)
    got = check_payload(payload, tmp_path, original, expected)
    assert len(got) < len(records(original)) // 4


def test_regions_at_container_edges(engine: Htsget, cram_dir: Path, tmp_path: Path) -> None:
    """One-base regions just inside and outside each container's CRAI span."""
    original = cram_dir / "small.cram"
    text = gzip.decompress((cram_dir / "small.cram.crai").read_bytes()).decode()
    entries = [[int(x) for x in line.split()] for line in text.splitlines()]
    names = {0: "chr1", 1: "chr2", 3: "chr3"}
    for ref, aln_start, span, *_ in entries[::3]:
        if ref not in names:
            continue
        first, last = aln_start - 1, aln_start - 1 + span - 1  # 0-based, inclusive
        for pos in {max(0, first - 1), first, last, last + 1}:
            region = Region(names[ref], pos, pos + 1)
            payload, _ = engine_payload(engine, reads("small", [region]), cram_dir)
            expected = region_records(original, names[ref], pos, pos + 1)
            check_payload(payload, tmp_path, original, expected)


@pytest.mark.parametrize("name", GENERATED)
def test_unplaced(engine: Htsget, cram_dir: Path, tmp_path: Path, name: str) -> None:
    original = cram_dir / f"{name}.cram"
    payload, _ = engine_payload(engine, reads(name, [Region("*")]), cram_dir)
    expected = region_records(original, "*", None, None)
    assert len(expected) == 300
    got = check_payload(payload, tmp_path, original, expected)
    if name == "small":  # unplaced reads have containers of their own: nothing placed
        assert all(r.split("\t")[2] == "*" for r in got)


@pytest.mark.parametrize("name", ["small", "v31"])
def test_multi_region_overlapping(
    engine: Htsget, cram_dir: Path, tmp_path: Path, name: str
) -> None:
    original = cram_dir / f"{name}.cram"
    regions = [
        Region("chr3", 10_000, 60_000),
        Region("chr1", 100_000, 150_000),
        Region("chr1", 120_000, 130_000),  # inside the previous one
        Region("chr1", 140_000, 180_000),  # overlapping it
        Region("*"),
        Region("chr3", 50_000, 55_000),
        Region("chrEmpty"),
    ]
    payload, urls = engine_payload(engine, reads(name, regions), cram_dir)
    assert sum(1 for u in urls if u["class"] == "header") == 1
    assert payload.count(EOF_CONTAINER_V3) == 1
    check_payload(payload, tmp_path, original, union_records(original, regions))
    ranges = [
        tuple(int(x) for x in u["headers"]["Range"].split("=")[1].split("-"))
        for u in urls
        if not u["url"].startswith("data:")
    ]
    assert ranges == sorted(ranges)
    for (_, a_end), (b_start, _) in zip(ranges, ranges[1:]):
        assert a_end < b_start  # in file order, disjoint, not even adjacent (merged)


@pytest.mark.parametrize("name", GENERATED)
def test_empty_regions(engine: Htsget, cram_dir: Path, tmp_path: Path, name: str) -> None:
    original = cram_dir / f"{name}.cram"
    eof = EOF_CONTAINER_V2 if name == "v21" else EOF_CONTAINER_V3
    empty = (Region("chrEmpty"), Region("chrEmpty", 10, 20), Region("chr2", 200_000, 300_000))
    for region in empty:
        payload, _ = engine_payload(engine, reads(name, [region]), cram_dir)
        assert payload == header_bytes(original, engine, name) + eof
        assert check_payload(payload, tmp_path, original, []) == []


def test_unknown_reference(engine: Htsget) -> None:
    with pytest.raises(NotFound):
        engine.ticket(reads("v30", [Region("chr9")]))
    with pytest.raises(NotFound):
        engine.ticket(reads("v30", [Region("chr1", 0, 10), Region("nope")]))
    with pytest.raises(InvalidInput):
        parse_get(Endpoint.READS, "v30", {"format": "CRAM", "referenceName": "*", "start": "1"})


def test_cram_not_served_as_bam(engine: Htsget) -> None:
    with pytest.raises(NotFound):
        engine.ticket(Query(Endpoint.READS, "v30", Format.BAM))


# --------------------------------------------------------------------------- reference data


def test_htsnexus_cram(tmp_path: Path) -> None:
    path = shared("cram", "htsnexus_test_NA12878.cram")
    root = path.parent
    engine = Htsget(for_data_dir(str(root)))
    whole, _ = engine_payload(engine, reads("htsnexus_test_NA12878"), root)
    assert whole == path.read_bytes()
    header, _ = engine_payload(engine, reads("htsnexus_test_NA12878", klass=Class.HEADER), root)
    assert check_payload(header, tmp_path, path, [], "header") == []
    assert header_text(tmp_path / "header.cram").count("@SQ") == 86
    rng = random.Random(5)
    for contig, lo, hi in [("11", 4_999_976, 5_099_889), ("20", 5_999_958, 6_100_000)]:
        for _ in range(4):
            start = rng.randint(lo - 1000, hi)
            end = start + rng.choice([1, 100, 10_000, 60_000])
            payload, _ = engine_payload(
                engine, reads("htsnexus_test_NA12878", [Region(contig, start, end)]), root
            )
            check_payload(payload, tmp_path, path, region_records(path, contig, start, end))
    payload, _ = engine_payload(engine, reads("htsnexus_test_NA12878", [Region("*")]), root)
    unplaced = region_records(path, "*", None, None)
    assert len(unplaced) == 12_475
    check_payload(payload, tmp_path, path, unplaced)
    payload, _ = engine_payload(engine, reads("htsnexus_test_NA12878", [Region("1")]), root)
    assert check_payload(payload, tmp_path, path, []) == []
    multi = [Region("20", 6_000_000, 6_050_000), Region("11", 5_000_000, 5_010_000),
             Region("20", 6_040_000, 6_060_000)]
    payload, _ = engine_payload(engine, reads("htsnexus_test_NA12878", multi), root)
    check_payload(payload, tmp_path, path, union_records(path, multi))


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def cram_server(cram_dir: Path) -> Iterator[Server]:
    yield from serve_dir(cram_dir)


def get_ticket(server: Server, id: str, **params: Any) -> dict:
    query: dict[str, Any] = {"format": "CRAM", **params}
    resp = requests.get(f"{server.url}/reads/{id}", params=query, timeout=30)
    assert resp.status_code == 200, resp.text
    ticket: dict = resp.json()
    return ticket


def test_e2e_regions(cram_server: Server, cram_dir: Path, tmp_path: Path) -> None:
    original = cram_dir / "small.cram"
    ticket = get_ticket(cram_server, "small", referenceName="chr2", start=30_000, end=45_000)
    assert ticket["htsget"]["format"] == "CRAM"
    check_payload(reassemble(ticket), tmp_path, original,
                  region_records(original, "chr2", 30_000, 45_000))
    ticket = get_ticket(cram_server, "small", referenceName="*")
    check_payload(reassemble(ticket), tmp_path, original, region_records(original, "*", None, None))
    ticket = get_ticket(cram_server, "v31", **{"class": "header"})
    assert check_payload(reassemble(ticket), tmp_path, cram_dir / "v31.cram", []) == []
    ticket = get_ticket(cram_server, "v30")
    assert reassemble(ticket) == (cram_dir / "v30.cram").read_bytes()
    assert "md5" in ticket["htsget"]


def test_e2e_post_and_errors(cram_server: Server, cram_dir: Path, tmp_path: Path) -> None:
    original = cram_dir / "small.cram"
    body: dict[str, Any] = {"format": "cram", "regions": [
        {"referenceName": "chr1", "start": 1000, "end": 30_000},
        {"referenceName": "chr1", "start": 20_000, "end": 40_000},
        {"referenceName": "chr3"},
    ]}
    resp = requests.post(f"{cram_server.url}/reads/small", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    expected = union_records(original, [Region("chr1", 1000, 40_000), Region("chr3")])
    check_payload(reassemble(resp.json()), tmp_path, original, expected)
    resp = requests.get(f"{cram_server.url}/reads/small",
                        params={"format": "CRAM", "referenceName": "chrX"}, timeout=30)
    assert resp.status_code == 404
    assert resp.json()["htsget"]["error"] == "NotFound"


def test_samtools_reads_cram_ticket(cram_server: Server, cram_dir: Path) -> None:
    url = f"{cram_server.url}/reads/small?format=CRAM&referenceName=chr1&start=10000&end=20000"
    out = subprocess.run(["samtools", "view", url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    expected = region_records(cram_dir / "small.cram", "chr1", 10000, 20000)
    # htslib re-applies the region to what it reads: the exact answer, from a ticket that
    # holds no more than it (test_e2e_regions checks the ticket itself)
    assert expected and out.stdout.splitlines() == expected


def test_samtools_reads_htsnexus_cram_ticket(tmp_path: Path) -> None:
    path = shared("cram", "htsnexus_test_NA12878.cram")
    port = free_port()
    srv = Server(["--data-dir", str(path.parent), "--port", str(port)], port).start()
    try:
        url = (f"{srv.url}/reads/htsnexus_test_NA12878?format=CRAM"
               "&referenceName=20&start=6010000&end=6020000")
        out = subprocess.run(["samtools", "view", url], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        expected = region_records(path, "20", 6_010_000, 6_020_000)
        assert expected and out.stdout.splitlines() == expected
        ticket = get_ticket(srv, "htsnexus_test_NA12878", referenceName="*")
        check_payload(reassemble(ticket), tmp_path, path, region_records(path, "*", None, None))
    finally:
        srv.stop()
