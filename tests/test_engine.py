"""The engine as a Python API: index discovery, GZI, md5, caching, ticket shape."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pysam
import pytest
from conftest import assert_records, htslib_records, make_bam, make_vcf

from htsgetr import Htsget, Query, Region
from htsgetr.config import for_data_dir
from htsgetr.formats import bgzf
from htsgetr.protocol import Class, Endpoint, Format, NotFound


def payload(engine: Htsget, root: Path, query: Query) -> bytes:
    """Reassemble a ticket straight from disk (no HTTP): urls map to files under root."""
    out = []
    for block in engine.ticket(query).to_json()["htsget"]["urls"]:
        url = block["url"]
        if url.startswith("data:;base64,"):
            out.append(base64.b64decode(url[13:]))
            continue
        key = url.split("/data/", 1)[1]
        first, last = block["headers"]["Range"][6:].split("-")
        with open(root / key, "rb") as f:
            f.seek(int(first))
            out.append(f.read(int(last) - int(first) + 1))
    return b"".join(out)


def records(data: bytes, tmp: Path, suffix: str = ".bam") -> list[str]:
    path = tmp / f"p{suffix}"
    path.write_bytes(data)
    if suffix == ".bam":
        with pysam.AlignmentFile(str(path), check_sq=False) as f:
            return [r.to_string() for r in f.fetch(until_eof=True)]
    with pysam.VariantFile(str(path)) as f:
        return [str(r) for r in f]


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    d = tmp_path / "root"
    d.mkdir()
    make_bam(d / "a.bam", seed=11, n_reads=1500)
    return d


def test_stem_bai_and_csi_discovery(root: Path, tmp_path: Path) -> None:
    engine = Htsget(for_data_dir(str(root)))
    q = Query(Endpoint.READS, "a", Format.BAM, regions=(Region("chr1", 0, 100_000),))
    expected = payload(engine, root, q)
    os.rename(root / "a.bam.bai", root / "a.bai")
    assert payload(Htsget(for_data_dir(str(root))), root, q) == expected
    os.unlink(root / "a.bai")
    with pytest.raises(NotFound):
        Htsget(for_data_dir(str(root))).ticket(q)
    pysam.index("-c", str(root / "a.bam"))
    got = records(payload(Htsget(for_data_dir(str(root))), root, q), tmp_path)
    want = htslib_records(root / "a.bam", [("chr1", 0, 100_000)])
    assert_records(got, want, "CSI")
    assert_records(records(expected, tmp_path), want, "BAI")


def test_recut_kept_from_its_second_ask(root: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A region's re-cut edges are deflated on its first two tickets and kept from the
    second on; cuts asked for once (random regions) take no room in the block cache."""
    engine = Htsget(for_data_dir(str(root)))
    deflated: list[int] = []
    real = bgzf.compress_block

    def counting(data: Any, level: Any = None) -> bytes:
        deflated.append(len(data))
        return real(data, level)

    monkeypatch.setattr(bgzf, "compress_block", counting)
    q = Query(Endpoint.READS, "a", Format.BAM, regions=(Region("chr1", 21_000, 23_500),))
    want = htslib_records(root / "a.bam", [("chr1", 21_000, 23_500)])
    counts = []
    for _ in range(4):
        deflated.clear()
        assert_records(records(payload(engine, root, q), tmp_path), want, "asked again")
        counts.append(len(deflated))
    assert counts[0] >= counts[1] >= 1 and counts[2] == counts[3] == 0, counts
    blocks = engine.cache.blocks
    kept = sum(1 for key in blocks._data if isinstance(key, tuple) and len(key) == 4)
    for start in range(30_000, 90_000, 3_000):  # each asked once
        engine.ticket(Query(Endpoint.READS, "a", Format.BAM,
                            regions=(Region("chr1", start, start + 1_000),)))
    assert sum(1 for key in blocks._data if isinstance(key, tuple) and len(key) == 4) == kept


def test_index_found_once_per_version(root: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The same engine: once the index is found, later tickets look at it only (not at the
    missing `.csi` first); moved away, the next ticket finds where it went; a new version of
    the data file looks again from the start."""
    from htsgetr.storage.local import LocalStorage

    engine = Htsget(for_data_dir(str(root)))
    q = Query(Endpoint.READS, "a", Format.BAM, regions=(Region("chr1", 0, 100_000),))
    want = htslib_records(root / "a.bam", [("chr1", 0, 100_000)])
    asked: list[str] = []
    exists = LocalStorage.exists

    def counting(self: LocalStorage, key: str) -> bool:
        asked.append(key)
        return exists(self, key)

    monkeypatch.setattr(LocalStorage, "exists", counting)
    engine.ticket(q)
    assert "a.bam.csi" in asked
    asked.clear()
    assert_records(records(payload(engine, root, q), tmp_path), want, "again")
    assert asked == ["a.bam"]  # the data file's existence; the index: its version stat
    os.rename(root / "a.bam.bai", root / "a.bai")
    asked.clear()
    assert_records(records(payload(engine, root, q), tmp_path), want, "moved")
    assert "a.bai" in asked
    pysam.index("-c", str(root / "a.bam"))  # a CSI now, and a new data file
    shutil.copy(root / "a.bam", root / "b.bam")
    os.replace(root / "b.bam", root / "a.bam")
    asked.clear()
    assert_records(records(payload(engine, root, q), tmp_path), want, "new version")
    assert asked[:2] == ["a.bam", "a.bam.csi"]  # (and the .gzi, for the new layout)


def test_gzi_and_block_headers_agree(root: Path) -> None:
    """Block ends from a .gzi and from BGZF headers give the same ticket."""
    q = Query(Endpoint.READS, "a", Format.BAM, regions=(Region("chr2", 5000, 60_000),))
    without = Htsget(for_data_dir(str(root))).ticket(q).to_json()
    subprocess.run(["bgzip", "-r", str(root / "a.bam")], check=True)
    assert (root / "a.bam.gzi").exists()
    with_gzi = Htsget(for_data_dir(str(root))).ticket(q).to_json()
    assert with_gzi == without


def test_md5_whole_file_only(root: Path, tmp_path: Path) -> None:
    engine = Htsget(for_data_dir(str(root)))
    whole = engine.ticket(Query(Endpoint.READS, "a", Format.BAM))
    raw = (root / "a.bam").read_bytes()
    assert whole.md5 == hashlib.md5(raw).hexdigest()
    assert payload(engine, root, Query(Endpoint.READS, "a", Format.BAM)) == raw
    q = Query(Endpoint.READS, "a", Format.BAM, regions=(Region("chr1"),))
    region = engine.ticket(q)
    assert region.md5 is None and "md5" not in region.to_json()["htsget"]
    assert_records(records(payload(engine, root, q), tmp_path),
                   htslib_records(root / "a.bam", [("chr1", None, None)]), "chr1")
    header = engine.ticket(Query(Endpoint.READS, "a", Format.BAM, klass=Class.HEADER))
    assert header.md5 is None
    (root / "a.bam.md5").write_text("0123456789abcdef0123456789abcdef  a.bam\n")
    fresh = Htsget(for_data_dir(str(root)))
    assert fresh.ticket(Query(Endpoint.READS, "a", Format.BAM)).md5 == \
        "0123456789abcdef0123456789abcdef"


def test_md5_of_a_recut_payload(tmp_path: Path) -> None:
    """A bgzip'd VCF whose header shares a block is re-cut: the payload is not the file, and
    the md5 is that of the payload."""
    d = tmp_path / "v"
    d.mkdir()
    make_vcf(d / "v.vcf.gz", n=200)
    engine = Htsget(for_data_dir(str(d)))
    q = Query(Endpoint.VARIANTS, "v", Format.VCF)
    t = engine.ticket(q)
    data = payload(engine, d, q)
    assert data != (d / "v.vcf.gz").read_bytes()  # bgzip put header and records in one block
    assert t.md5 == hashlib.md5(data).hexdigest()  # the digest of what the client gets
    assert records(data, tmp_path, ".vcf.gz") == records((d / "v.vcf.gz").read_bytes(), tmp_path,
                                                         ".vcf.gz")


def test_cache_follows_file_changes(root: Path, tmp_path: Path) -> None:
    engine = Htsget(for_data_dir(str(root)))
    q = Query(Endpoint.READS, "a", Format.BAM, regions=(Region("chr1", 0, 50_000),))
    first = records(payload(engine, root, q), tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    make_bam(other / "a.bam", seed=99, n_reads=700)
    shutil.copy(other / "a.bam", root / "a.bam")
    shutil.copy(other / "a.bam.bai", root / "a.bam.bai")
    second = records(payload(engine, root, q), tmp_path)
    assert_records(second, htslib_records(other / "a.bam", [("chr1", 0, 50_000)]), "new file")
    assert first != second


def test_ticket_shape(root: Path, tmp_path: Path) -> None:
    engine = Htsget(for_data_dir(str(root)))
    q = Query(Endpoint.READS, "a", Format.BAM, regions=(Region("chr1", 100, 2000), Region("chr3")))
    t = engine.ticket(q)
    assert_records(records(payload(engine, root, q), tmp_path),
                   htslib_records(root / "a.bam", [("chr1", 100, 2000), ("chr3", None, None)]))
    body = t.to_json()["htsget"]
    assert set(body) <= {"format", "urls", "md5"}
    classes = {u.get("class") for u in body["urls"]}
    assert classes <= {"header", "body"} and None not in classes
    for u in body["urls"]:
        assert u["url"].startswith(("http://", "https://", "data:;base64,"))
    assert body["urls"][-1]["url"] == "data:;base64," + base64.b64encode(bgzf.EOF_MARKER).decode()


@pytest.mark.parametrize("encoder", ["pybase64", "standard library"])
def test_inline_blocks_are_the_standard_base64_of_their_bytes(
        encoder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inline blocks are written with pybase64's vector code when it is installed, the
    standard library's otherwise: the same characters either way, for every length (the
    vector code takes the bytes in runs; a run's tail is where an encoder goes wrong)."""
    from htsgetr import protocol

    if encoder != "pybase64":
        monkeypatch.setattr(protocol, "_b64encode", base64.b64encode)
    else:
        assert protocol._b64encode is not base64.b64encode  # installed: a dependency
    data = os.urandom(70_000)
    for n in [*range(0, 200), 4095, 4096, 4097, 65_536, 70_000]:
        uri = protocol.data_uri(data[:n])
        assert uri == "data:;base64," + base64.b64encode(data[:n]).decode("ascii")
        assert base64.b64decode(uri[13:], validate=True) == data[:n]


def test_compress_block_roundtrip() -> None:
    data = os.urandom(200_000)
    blocks = bgzf.compress_block(data)
    out, pos = [], 0
    while pos < len(blocks):
        size = bgzf.block_size(blocks[pos:pos + 18])
        out.append(bgzf.decompress_block(blocks[pos:pos + size]))
        pos += size
    assert b"".join(out) == data and len(out) == 4


def test_regions_keep_long_records(tmp_path: Path) -> None:
    """A long deletion that starts far before the region still overlaps it; a symbolic
    <DEL> with INFO/END too. Tickets keep them and nothing that does not overlap."""
    d = tmp_path / "long"
    d.mkdir()
    header = {"HD": {"VN": "1.6", "SO": "coordinate"}, "SQ": [{"SN": "c1", "LN": 1_000_000}]}
    unsorted = d / "u.bam"
    with pysam.AlignmentFile(str(unsorted), "wb", header=header) as out:
        for i, (pos, cigar) in enumerate([(1000, "50M200000D50M"), (2000, "100M"),
                                          (150_000, "100M"), (300_000, "100M"),
                                          (300_500, "100M")] + [(p, "100M") for p in
                                                                 range(400_000, 600_000, 37)]):
            a = pysam.AlignedSegment(out.header)
            a.query_name, a.reference_id, a.reference_start = f"r{i}", 0, pos
            a.cigarstring, a.query_sequence = cigar, "A" * 100
            a.query_qualities = pysam.qualitystring_to_array("I" * 100)
            out.write(a)
    pysam.sort("-o", str(d / "l.bam"), str(unsorted))
    pysam.index(str(d / "l.bam"))
    vcf = d / "l.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n##contig=<ID=c1,length=1000000>\n"
                   '##INFO=<ID=END,Number=1,Type=Integer,Description="End">\n'
                   "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   "c1\t1000\tbig\tA\t<DEL>\t.\tPASS\tEND=250000\n"
                   "c1\t2000\tsmall\tA\tG\t.\tPASS\t.\n"
                   + "".join(f"c1\t{p}\tv{p}\tA\tG\t.\tPASS\t.\n"
                             for p in range(200_000, 400_000, 53)))
    pysam.tabix_index(str(vcf), preset="vcf")
    engine = Htsget(for_data_dir(str(d)))
    for beg, end in [(199_000, 200_500), (150_050, 150_060), (100_000, 100_001), (299_000, 300_001),
                     (500_000, 500_050), (700_000, 800_000)]:
        q = Query(Endpoint.READS, "l", Format.BAM, regions=(Region("c1", beg, end),))
        got = records(payload(engine, d, q), tmp_path)
        assert_records(got, htslib_records(d / "l.bam", [("c1", beg, end)]), (beg, end))
        q = Query(Endpoint.VARIANTS, "l", Format.VCF, regions=(Region("c1", beg, end),))
        got = records(payload(engine, d, q), tmp_path, ".vcf.gz")
        assert_records(got, htslib_records(d / "l.vcf.gz", [("c1", beg, end)]), (beg, end))


def test_merge_regions() -> None:
    from htsgetr.protocol import merge_regions

    regions = (Region("a", 10, 20), Region("b"), Region("a", 15, 30), Region("a", 30, 31),
               Region("a", 40, None), Region("a", None, 5), Region("b", 3, 4), Region("*"))
    assert merge_regions(regions) == [Region("a", 0, 5), Region("a", 10, 31),
                                      Region("a", 40, None), Region("b"), Region("*")]
    assert merge_regions((Region("c", None, 10), Region("c", 10, None))) == [Region("c")]


def test_many_regions_stay_exact(root: Path, tmp_path: Path) -> None:
    """Hundreds of regions in one POST: still exactly htslib's records, each once."""
    engine = Htsget(for_data_dir(str(root)))
    spans = [(i * 350, i * 350 + 100) for i in range(400)]
    regions = tuple(Region("chr1", s, e) for s, e in spans)
    q = Query(Endpoint.READS, "a", Format.BAM, regions=regions)
    got = records(payload(engine, root, q), tmp_path)
    want = htslib_records(root / "a.bam", [("chr1", s, e) for s, e in spans])
    assert_records(got, want, "400 regions")
    assert len(want) < len(records((root / "a.bam").read_bytes(), tmp_path)) // 2


def test_bcf_contig_ids_follow_idx() -> None:
    """BCF contig IDs: the position among ##contig lines, unless IDX= says otherwise."""
    from htsgetr.formats.vcf import header_contigs

    text = (b"##fileformat=VCFv4.2\n##FILTER=<ID=PASS,Description=\"All\",IDX=0>\n"
            b"##contig=<ID=chr2,length=10,IDX=1>\n##contig=<ID=chr1,length=10,IDX=0>\n"
            b"##contig=<ID=chrM,length=5>\n#CHROM\tPOS\n")
    assert header_contigs(text) == {"chr2": 1, "chr1": 0, "chrM": 2}
