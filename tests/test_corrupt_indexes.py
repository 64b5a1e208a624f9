"""Corrupt, foreign and bomb indexes: refused with a 500 naming the file, never a short ticket.

Each check of index/binning.py and of the CRAI checks in formats/cram.py is broken once by
a hand-made corruption; inflation bounds (max_index_bytes, max_header_bytes) are met by
small files that inflate to far more, with the memory they cost measured; and mutated
indexes are fuzzed end to end against htslib reading the same index: what we accept must
give every record htslib returns.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Optional

import pysam
import pytest
from conftest import make_bam, make_vcf
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from htsgetr.app import create_app
from htsgetr.config import Config, LocationConfig, for_data_dir
from htsgetr.engine import Htsget
from htsgetr.formats import bgzf
from htsgetr.formats.bam import BamHandler
from htsgetr.formats.base import Inline
from htsgetr.formats.cram import CramHandler
from htsgetr.formats.vcf import BcfHandler, VcfHandler
from htsgetr.protocol import Endpoint, Format, InternalError, Query, Region

try:
    from . import ranges_twin as tw
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    import ranges_twin as tw  # type: ignore[no-redef]

U64 = (1 << 64) - 1
REFS = [("chr1", 250_000), ("chr2", 120_000), ("chrEmpty", 50_000), ("chr3", 90_000)]


def samtools(*args: str) -> None:
    subprocess.run(["samtools", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good files, each with its index: BAM (BAI, CSI), another BAM with the same
    references, VCF (TBI, CSI), BCF (CSI), CRAM (CRAI; one with small containers)."""
    d = tmp_path_factory.mktemp("good")
    make_bam(d / "sample.bam")
    make_bam(d / "other.bam", seed=7)
    make_bam(d / "csi.bam", seed=3, csi=True, min_shift=12)
    make_vcf(d / "calls.vcf.gz")
    make_vcf(d / "calls_csi.vcf.gz", seed=4, csi=True)
    subprocess.run(["bcftools", "view", "-Ob", "-o", str(d / "calls.bcf"),
                    str(d / "calls.vcf.gz")], check=True)  # fmt: skip
    subprocess.run(["bcftools", "index", str(d / "calls.bcf")], check=True)
    if shutil.which("samtools"):
        for name, opts in [("v30", "version=3.0,no_ref=1"),
                           ("small", "version=3.0,no_ref=1,seqs_per_slice=100")]:  # fmt: skip
            samtools("view", "-C", "--output-fmt", f"cram,{opts}", "-o", str(d / f"{name}.cram"),
                     str(d / "sample.bam"))  # fmt: skip
            samtools("index", str(d / f"{name}.cram"))
    return d


@pytest.fixture
def work(base: Path, tmp_path: Path) -> Path:
    """A fresh copy of the good files, for one test to corrupt."""
    d = tmp_path / "data"
    shutil.copytree(base, d)
    return d


def peak_bytes(work: Callable[[], object]) -> int:
    """The most memory Python held at once while `work` ran (tracemalloc): how a test tells
    a refusal that stopped early from one that inflated everything first, without a clock."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def engine_for(d: Path, **limits: int) -> Htsget:
    """An engine over `d`; with limits, its handlers get them (Limits.of(config))."""
    config = Config(locations=[LocationConfig(root=str(d))], **limits)
    engine = Htsget(config)
    if limits:
        lim = bgzf.Limits.of(config)
        engine.handlers.update({
            Format.BAM: BamHandler(lim), Format.VCF: VcfHandler(lim),
            Format.BCF: BcfHandler(lim), Format.CRAM: CramHandler(lim),
        })  # fmt: skip
    return engine


def query(id: str, fmt: Format, name: Optional[str] = "chr1", start: Optional[int] = None,
          end: Optional[int] = None) -> Query:  # fmt: skip
    endpoint = Endpoint.VARIANTS if fmt in (Format.VCF, Format.BCF) else Endpoint.READS
    regions = None if name is None else (Region(name, start, end),)
    return Query(endpoint, id, fmt, None, regions)


def refused(d: Path, q: Query, index: str, match: str = "", **limits: int) -> str:
    """The ticket is an InternalError naming the index file (and `match`)."""
    with pytest.raises(InternalError) as info:
        engine_for(d, **limits).ticket(q)
    message = info.value.message
    assert index in message, message
    assert re.search(match, message), message
    return message


# --------------------------------------------------------------------------- editing indexes


def read_index(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def write_index(path: Path, data: bytes) -> None:
    """Write `data` the way the file was stored: raw (BAI) or BGZF (CSI, TBI)."""
    if data[:4] == b"BAI\1" or path.suffix == ".bai":
        path.write_bytes(data)
    else:
        path.write_bytes(bgzf.compress_block(data) + bgzf.EOF_MARKER)


def field_list(data: bytes, name: str) -> list[tuple[int, int]]:
    return [(pos, size) for n, pos, size in tw.fields(data) if n == name]


def get(data: bytes, pos: int, size: int) -> int:
    return struct.unpack_from("<Q" if size == 8 else "<i", data, pos)[0]


def put(data: bytes, pos: int, size: int, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<Q" if size == 8 else "<i", out, pos, value)
    return bytes(out)


def offset_chunks(data: bytes, meta: bool = True) -> list[tuple[int, int]]:
    """(beg position, end position) of the chunks that hold virtual offsets: those of real
    bins, and (with `meta`) the pseudo-bin's first (its second holds read counts)."""
    depth = get(data, 8, 4) if data[:4] == b"CSI\1" else 5
    pseudo = tw.bin_first(depth + 1) + 1
    out, in_pseudo, k = [], False, 0
    for name, pos, _ in tw.fields(data):
        if name == "bin":
            in_pseudo, k = get(data, pos, 4) == pseudo, 0
        elif name == "chunk_beg":
            if not in_pseudo or (meta and k == 0):
                out.append((pos, pos + 8))
            k += 1
    return out


def add_empty_ref(data: bytes) -> bytes:
    """One more reference, without data, before the trailing n_no_coor."""
    n_ref_pos = field_list(data, "n_ref")[0][0]
    tail = field_list(data, "n_no_coor")
    cut = tail[0][0] if tail else len(data)
    empty = b"\0" * (4 if data[:4] == b"CSI\1" else 8)
    out = data[:cut] + empty + data[cut:]
    return put(out, n_ref_pos, 4, get(data, n_ref_pos, 4) + 1)


def edit(path: Path, change: Callable[[bytes], bytes]) -> None:
    write_index(path, change(read_index(path)))


def data_size(path: Path) -> int:
    return path.stat().st_size


# --------------------------------------------------------------------------- BAM


def test_good_files_pass(base: Path) -> None:
    engine = engine_for(base)
    for id, fmt, name in [("sample", Format.BAM, "chr1"), ("csi", Format.BAM, "chr2"),
                          ("calls", Format.VCF, "1"), ("calls_csi", Format.VCF, "X"),
                          ("calls", Format.BCF, "2")]:  # fmt: skip
        assert engine.ticket(query(id, fmt, name, 1000, 90_000)).blocks


def test_chunk_past_the_end(work: Path) -> None:
    size = data_size(work / "sample.bam")

    def change(data: bytes) -> bytes:
        pos, _ = max(field_list(data, "chunk_end"), key=lambda f: get(data, *f))
        return put(data, pos, 8, size << 16)  # the EOF block: no record there

    edit(work / "sample.bam.bai", change)
    refused(work, query("sample", Format.BAM), "sample.bam.bai", "ends past the end")


def test_reversed_chunk(work: Path) -> None:
    def change(data: bytes) -> bytes:
        beg, end = offset_chunks(data, meta=False)[-1]
        u, v = get(data, beg, 8), get(data, end, 8)
        return put(put(data, beg, 8, v), end, 8, u)

    edit(work / "sample.bam.bai", change)
    refused(work, query("sample", Format.BAM), "sample.bam.bai", "ends before it starts")


@pytest.mark.parametrize("bin_no,what", [(37449, "not a bin"), (1 << 20, "not a bin")])
def test_bin_outside_the_scheme(work: Path, bin_no: int, what: str) -> None:
    edit(work / "sample.bam.bai", lambda d: put(d, field_list(d, "bin")[0][0], 4, bin_no))
    refused(work, query("sample", Format.BAM), "sample.bam.bai", what)


def test_bin_twice(work: Path) -> None:
    def change(data: bytes) -> bytes:
        bins = field_list(data, "bin")
        return put(data, bins[1][0], 4, get(data, *bins[0]))

    edit(work / "sample.bam.bai", change)
    refused(work, query("sample", Format.BAM), "sample.bam.bai", "twice")


def test_linear_index_past_the_end(work: Path) -> None:
    size = data_size(work / "sample.bam")
    edit(work / "sample.bam.bai", lambda d: put(d, field_list(d, "ioff")[-1][0], 8, size << 16))
    refused(work, query("sample", Format.BAM), "sample.bam.bai", "linear index")


def test_csi_loffset_past_the_end(work: Path) -> None:
    size = data_size(work / "csi.bam")
    edit(work / "csi.bam.csi", lambda d: put(d, field_list(d, "loffset")[0][0], 8, size << 16))
    refused(work, query("csi", Format.BAM), "csi.bam.csi", "loffset")


def test_csi_bin_beyond_its_depth(work: Path) -> None:
    def change(data: bytes) -> bytes:
        depth = get(data, 8, 4)
        return put(data, field_list(data, "bin")[0][0], 4, tw.bin_first(depth + 1))

    edit(work / "csi.bam.csi", change)
    refused(work, query("csi", Format.BAM), "csi.bam.csi", "not a bin")


def test_reference_count_differs_from_the_header(work: Path) -> None:
    edit(work / "sample.bam.bai", add_empty_ref)
    refused(work, query("sample", Format.BAM), "sample.bam.bai", "5 references, the header 4")


def test_first_chunk_inside_the_header(work: Path) -> None:
    def change(data: bytes) -> bytes:
        first = min(get(data, beg, 8) for beg, _ in offset_chunks(data))
        for beg, _ in offset_chunks(data):  # the first record: one byte earlier, everywhere
            if get(data, beg, 8) == first:
                data = put(data, beg, 8, first - 1)
        return data

    edit(work / "sample.bam.bai", change)
    refused(work, query("sample", Format.BAM), "sample.bam.bai", "not where the header ends")


def test_index_of_another_bam(work: Path) -> None:
    """other.bam has the same references; its index is still told apart."""
    shutil.copy(work / "other.bam.bai", work / "sample.bam.bai")
    refused(work, query("sample", Format.BAM), "sample.bam.bai", "does not index sample.bam")


@pytest.mark.parametrize("source,target,id,fmt,what", [
    ("calls.vcf.gz.tbi", "sample.bam.bai", "sample", Format.BAM, "TBI index"),
    ("calls_csi.vcf.gz.csi", "csi.bam.csi", "csi", Format.BAM, "tabix index"),
    ("sample.bam.bai", "calls.vcf.gz.tbi", "calls", Format.VCF, "BAI index"),
    ("calls_csi.vcf.gz.csi", "calls.bcf.csi", "calls", Format.BCF, "tabix index"),
    ("csi.bam.csi", "calls_csi.vcf.gz.csi", "calls_csi", Format.VCF, "no tabix meta"),
])  # fmt: skip
def test_index_of_another_kind(
    work: Path, source: str, target: str, id: str, fmt: Format, what: str
) -> None:
    shutil.copy(work / source, work / target)
    name = "1" if fmt is not Format.BAM else "chr1"
    refused(work, query(id, fmt, name), target, what)


# --------------------------------------------------------------------------- VCF, BCF


def test_vcf_csi_without_tabix_meta(work: Path) -> None:
    def change(data: bytes) -> bytes:
        l_aux = get(data, 12, 4)
        return data[:12] + struct.pack("<i", 0) + data[16 + l_aux :]

    edit(work / "calls_csi.vcf.gz.csi", change)
    refused(work, query("calls_csi", Format.VCF, "1"), "calls_csi.vcf.gz.csi", "no tabix meta")


def test_tabix_of_another_format(work: Path) -> None:
    edit(work / "calls.vcf.gz.tbi", lambda d: put(d, 8, 4, 1))  # TBX_SAM
    refused(work, query("calls", Format.VCF, "1"), "calls.vcf.gz.tbi", "another kind")


def test_tabix_names_and_references_disagree(work: Path) -> None:
    edit(work / "calls.vcf.gz.tbi", add_empty_ref)
    refused(work, query("calls", Format.VCF, "1"), "calls.vcf.gz.tbi", "3 sequence names for 4")


def test_tabix_name_twice(work: Path) -> None:
    edit(work / "calls.vcf.gz.tbi", lambda d: d.replace(b"1\x002\x00X\x00", b"1\x002\x001\x00"))
    refused(work, query("calls", Format.VCF, "1"), "calls.vcf.gz.tbi", "twice")


def test_tabix_names_of_another_file(work: Path) -> None:
    edit(work / "calls.vcf.gz.tbi", lambda d: d.replace(b"1\x002\x00X\x00", b"Q\x00R\x00S\x00"))
    refused(work, query("calls", Format.VCF, "1"), "calls.vcf.gz.tbi", "none of its sequence")


def test_tabix_chunk_past_the_end(work: Path) -> None:
    size = data_size(work / "calls.vcf.gz")

    def change(data: bytes) -> bytes:
        pos, _ = max(field_list(data, "chunk_end"), key=lambda f: get(data, *f))
        return put(data, pos, 8, (size - 28) << 16 | 1)  # inside the EOF block

    edit(work / "calls.vcf.gz.tbi", change)
    refused(work, query("calls", Format.VCF, "1"), "calls.vcf.gz.tbi", "past the end")


def test_bcf_reference_count(work: Path) -> None:
    edit(work / "calls.bcf.csi", add_empty_ref)
    refused(work, query("calls", Format.BCF, "1"), "calls.bcf.csi", "5 references, the header 4")


# --------------------------------------------------------------------------- the HTTP face


def test_http_500_names_the_index(work: Path) -> None:
    shutil.copy(work / "other.bam.bai", work / "sample.bam.bai")
    client = create_app(for_data_dir(str(work))).test_client()
    resp = client.get("/reads/sample?referenceName=chr1&start=0&end=1000")
    assert resp.status_code == 500
    body = resp.get_json(force=True)
    assert body["htsget"]["error"] == "InternalError"
    assert "sample.bam.bai" in body["htsget"]["message"]
    assert "Traceback" not in resp.get_data(as_text=True)


def test_refusal_is_remembered(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused index is not read and checked again for every request (until it changes)."""
    from htsgetr.formats import bam as bam_module

    edit(work / "sample.bam.bai", add_empty_ref)
    calls = []
    real = bam_module.load_bam
    monkeypatch.setattr(bam_module, "load_bam", lambda *a: calls.append(1) or real(*a))
    engine = engine_for(work)
    for _ in range(3):
        with pytest.raises(InternalError, match="sample.bam.bai"):
            engine.ticket(query("sample", Format.BAM))
    assert len(calls) == 1
    shutil.copy(work / "other.bam", work / "sample.bam")  # changed: checked afresh
    (work / "sample.bam.bai").write_bytes((work / "other.bam.bai").read_bytes())
    assert engine.ticket(query("sample", Format.BAM)).blocks and len(calls) == 2


# --------------------------------------------------------------------------- CRAI

needs_samtools = pytest.mark.skipif(shutil.which("samtools") is None, reason="no samtools")


def crai_lines(path: Path) -> list[list[int]]:
    text = gzip.decompress(path.read_bytes()).decode()
    return [[int(x) for x in line.split("\t")] for line in text.splitlines()]


def write_crai(path: Path, lines: list[list[int]]) -> None:
    path.write_bytes(gzip.compress("".join("\t".join(map(str, x)) + "\n" for x in lines).encode()))


@needs_samtools
def test_good_crai_verified_once(base: Path) -> None:
    engine = engine_for(base)
    engine.ticket(query("small", Format.CRAM, "chr1", 0, 60_000))
    source = engine.locate("small", Format.CRAM)
    crai = CramHandler().index(source)
    seen = set(crai.verified)
    assert seen and seen <= set(crai.container_offsets)
    engine.ticket(query("small", Format.CRAM, "chr1", 0, 60_000))
    assert set(crai.verified) == seen
    engine.ticket(query("small", Format.CRAM, "*"))
    assert set(crai.verified) > seen


@needs_samtools
@pytest.mark.parametrize("shift", [1, 7, -3])
def test_crai_shifted_offsets(work: Path, shift: int) -> None:
    lines = crai_lines(work / "small.cram.crai")
    first = lines[0][3]
    shifted = [x[:3] + [x[3] + shift if x[3] > first else x[3]] + x[4:] for x in lines]
    write_crai(work / "small.cram.crai", shifted)
    refused(work, query("small", Format.CRAM, "chr1", 0, 250_000), "small.cram.crai",
            "container")  # fmt: skip


@needs_samtools
def test_crai_offset_beyond_the_file(work: Path) -> None:
    lines = crai_lines(work / "v30.cram.crai")
    lines[-1][3] = data_size(work / "v30.cram") + 100
    write_crai(work / "v30.cram.crai", lines)
    refused(work, query("v30", Format.CRAM, "chr1", 0, 1000), "v30.cram.crai", "outside")


@needs_samtools
@pytest.mark.parametrize("where", ["truncated", "garbage"])
def test_crai_offset_not_at_a_container(work: Path, where: str) -> None:
    """An offset where no container header can be read: too close to the end, or bytes
    that read as a negative length."""
    from htsgetr.formats.cram_layout import parse_container_header

    lines = crai_lines(work / "v30.cram.crai")
    data = (work / "v30.cram").read_bytes()
    if where == "truncated":
        offset = len(data) - 38 - 3  # 3 bytes before the EOF container
    else:
        for offset in range(lines[0][3] + 1, len(data) - 38 - 64):
            try:
                parse_container_header(data[: len(data) - 38], offset, 3, offset)
            except ValueError:
                break
    lines[0][3] = offset
    write_crai(work / "v30.cram.crai", lines)
    refused(work, query("v30", Format.CRAM, REFS[lines[0][0]][0]), "v30.cram.crai",
            "no container header")  # fmt: skip


@needs_samtools
def test_crai_reference_mismatch(work: Path) -> None:
    lines = crai_lines(work / "small.cram.crai")
    i = next(i for i, x in enumerate(lines) if x[0] == 1)  # a chr2 line said to be chr1
    lines[i][0] = 0
    write_crai(work / "small.cram.crai", lines)
    refused(work, query("small", Format.CRAM, "chr1", 0, 250_000), "small.cram.crai",
            "holds reference 1")  # fmt: skip


@needs_samtools
def test_crai_slice_offset_mismatch(work: Path) -> None:
    lines = crai_lines(work / "small.cram.crai")
    lines[2][4] -= 5  # not a landmark, the slice still inside its container
    write_crai(work / "small.cram.crai", lines)
    refused(work, query("small", Format.CRAM, "chr1", 0, 250_000), "small.cram.crai", "slice")


# --------------------------------------------------------------------------- bombs


def gzip_bomb(head: bytes, total: int) -> bytes:
    """`head` then zeros, `total` bytes in all, as one gzip member of about total/1000."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [comp.compress(head)]
    zeros = bytes(1 << 20)
    left = total - len(head)
    while left > 0:
        out.append(comp.compress(zeros[: min(left, len(zeros))]))
        left -= len(zeros)
    out.append(comp.flush())
    return b"".join(out)


def test_inflate_stops_at_the_limit() -> None:
    bomb = gzip_bomb(b"", 64 << 20)
    assert len(bomb) < 100_000

    def refuse() -> None:
        with pytest.raises(bgzf.TooLarge):
            bgzf.inflate(bomb, 1 << 20)

    assert peak_bytes(refuse) < 8 << 20  # the limit and a step, not the 64 MiB
    assert len(bgzf.inflate(gzip.compress(b"x" * 1000) * 3, 3000)) == 3000
    with pytest.raises(ValueError, match="truncated"):
        bgzf.inflate(gzip.compress(b"x" * 1000)[:-5])
    with pytest.raises(ValueError, match="corrupt"):
        bgzf.inflate(b"\x1f\x8b\x08\x00" + bytes(6) + b"\xff" * 20)


@pytest.mark.parametrize("isize", [0, 1 << 24])
def test_bgzf_block_bomb(isize: int) -> None:
    """A BGZF block may hold 64 KiB; one inflating to more is refused, not inflated (its
    ISIZE trailer telling the truth or not)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = comp.compress(bytes(1 << 24)) + comp.flush()
    assert len(deflated) < 0xFF00
    bsize = bgzf.HEADER_SIZE + len(deflated) + 8
    block = (struct.pack("<4BIBBHBBHH", 0x1F, 0x8B, 8, 4, 0, 0, 0xFF, 6, 66, 67, 2, bsize - 1)
             + deflated + struct.pack("<II", 0, isize & 0xFFFFFFFF))  # fmt: skip
    with pytest.raises(ValueError, match="65536"):
        bgzf.decompress_block(block)


@pytest.mark.parametrize("index,id,fmt,head", [
    ("calls.vcf.gz.tbi", "calls", Format.VCF, b"TBI\1"),
    ("csi.bam.csi", "csi", Format.BAM, b"CSI\1" + struct.pack("<iii", 14, 5, 0)),
    ("v30.cram.crai", "v30", Format.CRAM, b"0\t1\t100\t0\t0\t0\n"),
])  # fmt: skip
def test_index_bomb(work: Path, index: str, id: str, fmt: Format, head: bytes) -> None:
    if fmt is Format.CRAM and not (work / index).exists():
        pytest.skip("no samtools")
    (work / index).write_bytes(gzip_bomb(head, 200 << 20))
    peak = peak_bytes(lambda: refused(
        work, query(id, fmt, "1" if fmt is Format.VCF else "chr1", 0, 1000), index,
        "max_index_bytes", max_index_bytes=4 << 20))  # fmt: skip
    assert peak < 32 << 20, f"{peak >> 20} MiB allocated to refuse a 200 MiB index"


def test_engine_takes_the_limits_from_its_config(work: Path) -> None:
    with pytest.raises(InternalError, match="max_index_bytes"):
        Htsget(Config(locations=[LocationConfig(root=str(work))], max_index_bytes=100)).ticket(
            query("sample", Format.BAM)
        )


def test_raw_index_over_the_limit(work: Path) -> None:
    refused(work, query("sample", Format.BAM), "sample.bam.bai", "max_index_bytes",
            max_index_bytes=100)  # fmt: skip


def bgzf_zeros_file(head: bytes, total: int) -> bytes:
    """`head` then zeros in full BGZF blocks (each about 100 bytes on disk)."""
    data = head + bytes(total - len(head))
    return b"".join(bgzf.compress_block(data[i : i + 0xFF00]) for i in range(0, total, 0xFF00))


def test_bam_header_bomb(work: Path) -> None:
    """l_text of 2 GB over zero blocks: refused after max_header_bytes, not at the file end."""
    data = bgzf_zeros_file(b"BAM\1" + struct.pack("<i", (1 << 31) - 1), 64 << 20)
    (work / "sample.bam").write_bytes(data + bgzf.EOF_MARKER)
    engine = engine_for(work, max_header_bytes=2 << 20)

    def refuse() -> None:
        with pytest.raises(InternalError, match="max_header_bytes"):
            engine.ticket(query("sample", Format.BAM))

    peak = peak_bytes(refuse)  # the blocks are ~100 bytes each: all of them in one read
    assert peak < 12 << 20, f"{peak >> 20} MiB inflated before the refusal"
    with pytest.raises(InternalError, match="sample.bam: .*truncated|sample.bam"):
        engine_for(work).ticket(query("sample", Format.BAM))


@pytest.mark.parametrize("id,fmt,ext", [("sample", Format.BAM, ".bam"),
                                         ("calls", Format.VCF, ".vcf.gz"),
                                         ("calls", Format.BCF, ".bcf")])  # fmt: skip
@pytest.mark.parametrize("content", [b"", bgzf.EOF_MARKER])
def test_data_file_without_data(work: Path, id: str, fmt: Format, ext: str, content: bytes) -> None:
    """Zero bytes, or only the EOF block: a 500 naming the file, not a crash."""
    (work / (id + ext)).write_bytes(content)
    with pytest.raises(InternalError, match=re.escape(id + ext)):
        engine_for(work).ticket(query(id, fmt, None))


def itf8(v: int) -> bytes:
    from htsgetr.formats.cram_recode import itf8 as enc

    return enc(v)


@pytest.mark.parametrize("method", ["gzip", "bzip2", "lzma"])
@pytest.mark.parametrize("truthful", [True, False])
def test_cram_header_block_bomb(work: Path, method: str, truthful: bool) -> None:
    """A header block inflating to 200 MB, its declared raw size true or not."""
    import bz2
    import lzma

    text = struct.pack("<i", 200 << 20) + bytes(200 << 20)
    payload = {"gzip": lambda b: gzip.compress(b, 9), "bzip2": bz2.compress,
               "lzma": lzma.compress}[method](text)  # fmt: skip
    code = {"gzip": 1, "bzip2": 2, "lzma": 3}[method]
    raw_size = len(text) if truthful else 1000
    block = bytes([code, 0]) + itf8(0) + itf8(len(payload)) + itf8(raw_size) + payload + bytes(4)
    head = (itf8(0) * 4 + b"\0\0" + itf8(1) + itf8(0) + bytes(4))  # ref..records, ltf8 x2
    container = struct.pack("<i", len(block)) + head
    (work / "v30.cram").write_bytes(b"CRAM\3\0" + bytes(20) + container + block)
    engine = engine_for(work, max_header_bytes=1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(InternalError, match="v30.cram"):
            engine.ticket(query("v30", Format.CRAM, None))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"{peak >> 20} MiB allocated to refuse it"


BOMB_RSS = textwrap.dedent("""
    import resource, sys
    sys.path.insert(0, sys.argv[2])
    from test_corrupt_indexes import engine_for, query
    from htsgetr.formats import bgzf
    from htsgetr.protocol import Format, InternalError
    from pathlib import Path
    engine_for(Path(sys.argv[1]), max_index_bytes=4 << 20)  # imports done
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        engine_for(Path(sys.argv[1]), max_index_bytes=4 << 20).ticket(
            query("calls", Format.VCF, "1", 0, 1000))
    except InternalError as exc:
        assert "max_index_bytes" in exc.message, exc.message
    else:
        raise SystemExit("accepted")
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
""")


def test_index_bomb_memory(work: Path) -> None:
    """A 2 MB TBI that inflates to 2 GiB costs a few MB of memory, not gigabytes."""
    bomb = gzip_bomb(b"TBI\1", 2 << 30)
    assert len(bomb) < 3 << 20
    (work / "calls.vcf.gz.tbi").write_bytes(bomb)
    tests = str(Path(__file__).parent)
    out = subprocess.run([sys.executable, "-c", BOMB_RSS, str(work), tests], capture_output=True,
                         text=True, timeout=60, cwd=tests)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    growth = int(out.stdout.split()[-1])
    print(f"index bomb: max RSS grew by {growth / 1e6:.1f} MB")
    assert growth < 100 << 20, f"max RSS grew by {growth >> 20} MB"


# --------------------------------------------------------------------------- against htslib

#: examples per run (HTSGETR_INDEX_FUZZ=2000 for a longer hunt)
FUZZ = settings(max_examples=int(os.environ.get("HTSGETR_INDEX_FUZZ", "150")), deadline=None,
                suppress_health_check=list(HealthCheck))  # fmt: skip


def payload(engine: Htsget, q: Query) -> bytes:
    """What a client reassembles from the ticket (inline pieces and file byte ranges)."""
    source = engine.locate(q.id, q.format)
    pieces = engine.handler(q.format).pieces(source, q)
    return b"".join(p.data if isinstance(p, Inline) else source.read(p.start, p.end)
                    for p in pieces)  # fmt: skip


def our_records(engine: Htsget, q: Query, tmp: Path) -> list[str]:
    data = payload(engine, q)
    if q.format is Format.VCF:
        text = bgzf.gunzip(data).decode()
        return [line for line in text.splitlines() if line and not line.startswith("#")]
    out = tmp / "ticket.bam"
    out.write_bytes(data)
    with pysam.AlignmentFile(str(out), "rb", check_sq=False) as f:
        return [r.to_string() for r in f.fetch(until_eof=True)]


HTSLIB_WORKER = textwrap.dedent("""
    import json, sys
    import pysam
    for line in sys.stdin:
        data, index, fmt, name, beg, end = json.loads(line)
        try:
            if fmt == "VCF":
                with pysam.TabixFile(data, index=index) as t:
                    out = list(t.fetch(name, beg, end))
            else:
                with pysam.AlignmentFile(data, "rb", index_filename=index) as f:
                    out = [r.to_string() for r in f.fetch(name, beg, end)]
        except (OSError, ValueError, KeyError) as exc:
            out = None
        print(json.dumps(out), flush=True)
""")


#: seconds htslib gets per query before it is deemed to loop forever (some mutated
#: indexes make it do that)
HTSLIB_PATIENCE = 10.0


class Htslib:
    """pysam in a child process: htslib trusts an index, and some mutated ones crash it (a
    segmentation fault) or make it loop forever, which must not take the test run along."""

    def __init__(self) -> None:
        self.proc: Optional[subprocess.Popen] = None

    def records(self, data: Path, index: Path, fmt: Format, name: str, beg: int, end: int):
        """Records htslib returns through this index, None when it fails, "crash" when the
        process dies."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, "-c", HTSLIB_WORKER], text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL)  # fmt: skip
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = [str(data), str(index), fmt.value, name, beg, end]
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], HTSLIB_PATIENCE)
            line = self.proc.stdout.readline() if ready else None
        except BrokenPipeError:
            line = ""
        if not line:
            self.close()
            return "crash" if line == "" else "hang"
        return json.loads(line)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="module")
def htslib() -> Iterator[Htslib]:
    worker = Htslib()
    yield worker
    worker.close()


@FUZZ
@given(data=st.data())
def test_mutated_index_never_loses_htslib_records(
    base: Path, tmp_path_factory: pytest.TempPathFactory, htslib: Htslib, data: st.DataObject
) -> None:
    """A mutated index (see ranges_twin.mutate) that we accept gives every record htslib
    returns through the same index for a random region; or we refuse it."""
    id, fmt, index = data.draw(st.sampled_from([
        ("sample", Format.BAM, "sample.bam.bai"), ("csi", Format.BAM, "csi.bam.csi"),
        ("calls", Format.VCF, "calls.vcf.gz.tbi")]))  # fmt: skip
    d = tmp_path_factory.mktemp("fuzz")
    ext = ".bam" if fmt is Format.BAM else ".vcf.gz"
    shutil.copy(base / (id + ext), d / (id + ext))
    raw = read_index(base / index)
    for _ in range(data.draw(st.integers(1, 2))):
        raw, label = tw.mutate(raw, lambda lo, hi: data.draw(st.integers(lo, hi)))
    event(label)
    write_index(d / index, raw)
    if fmt is Format.BAM:
        name, length = data.draw(st.sampled_from(REFS))
    else:
        name, length = data.draw(st.sampled_from([("1", 300_000), ("2", 200_000), ("X", 150_000)]))
    beg = data.draw(st.integers(0, length - 1))
    end = beg + data.draw(st.sampled_from([1, 100, 5000, 50_000, length]))
    theirs = htslib.records(d / (id + ext), d / index, fmt, name, beg, end)
    if theirs in ("crash", "hang"):
        event(f"htslib {theirs}s")
        theirs = None
    engine = Htsget(for_data_dir(str(d)))
    q = query(id, fmt, name, beg, end)
    try:
        ours: Optional[list[str]] = our_records(engine, q, d)
    except InternalError as exc:
        event("refused" + (", htslib fails too" if theirs is None else ", htslib reads it"))
        event("refused: " + re.sub(r"[0-9:]+|\(.*\)", "N", exc.message.split(":", 1)[-1])[:60])
        return
    except (OSError, ValueError):  # a ticket, but not a readable stream (see the report)
        ours = None
    event("accepted" + (", htslib fails" if theirs is None else ", compared")
          + ("" if ours is not None else ", ours unreadable"))  # fmt: skip
    where = f"{index}, {label}, {name}:{beg}-{end}"
    if theirs is not None:
        assert ours is not None, f"htslib reads {len(theirs)} records, ours unreadable ({where})"
        missing = [r for r in theirs if r not in set(ours)]
        assert not missing, f"{len(missing)} of {len(theirs)} htslib records missing ({where})"
