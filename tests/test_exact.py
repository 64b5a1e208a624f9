"""Record-exact tickets: every BAM, VCF and BCF region ticket, restricted or not.

The reassembled file holds exactly the records htslib's own region query returns (pysam
`fetch`), each once, in file order, with header and EOF. The data is generated here with
what makes that hard: reads of 1-100 kbp spanning region edges, short reads sitting between
overlapping long ones, placed unmapped mates, unplaced reads, records split over many small
BGZF blocks; VCF long deletions, symbolic alleles with END= and SVLEN, gVCF blocks, '#'
lines in a body; BAI, CSI and TBI indexes.
"""

from __future__ import annotations

import base64
import logging
import random
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import pysam
import pytest
import ranges_twin
from conftest import shared

from htsgetr import Htsget, Query, Region
from htsgetr.config import for_data_dir
from htsgetr.formats import bgzf, exact
from htsgetr.protocol import Endpoint, Format

REFS = [("chr1", 400_000), ("chr2", 200_000), ("chrEmpty", 50_000), ("chr3", 150_000)]
CONTIGS = [("1", 400_000), ("2", 200_000), ("empty", 10_000), ("X", 150_000)]


# --------------------------------------------------------------------------- data


def _segment(header: pysam.AlignmentHeader, name: str, tid: int, pos: int, qlen: int,
             cigar: Optional[str], flag: int, rng: random.Random) -> pysam.AlignedSegment:
    a = pysam.AlignedSegment(header)
    a.query_name = name
    a.query_sequence = "".join(rng.choices("ACGT", k=qlen))
    a.query_qualities = pysam.qualitystring_to_array("I" * qlen)
    a.reference_id, a.reference_start, a.flag = tid, pos, flag
    if cigar is not None:
        a.cigarstring = cigar
        a.mapping_quality = rng.randint(0, 60)
    return a


def make_reads(path: Path, seed: int) -> Path:
    """A sorted BAM (no index) with the read shapes that make exact tickets hard."""
    rng = random.Random(seed)
    header = pysam.AlignmentHeader.from_dict({
        "HD": {"VN": "1.6", "SO": "coordinate"},
        "SQ": [{"SN": n, "LN": ln} for n, ln in REFS],
    })
    placed = [t for t, (n, _) in enumerate(REFS) if n != "chrEmpty"]
    reads: list[tuple[int, int, int, Optional[str], int]] = []  # tid, pos, qlen, cigar, flag
    for _ in range(2500):  # short reads, some spliced, deleted, clipped
        tid = rng.choice(placed)
        qlen = rng.choice([36, 75, 100, 151, rng.randint(20, 300)])
        shape = rng.random()
        if shape < 0.1:
            cigar = f"{qlen // 2}M{rng.randint(1, 3000)}N{qlen - qlen // 2}M"
        elif shape < 0.2:
            cigar = f"5S{qlen - 10}M{rng.randint(1, 40)}D5M"
        elif shape < 0.22:
            cigar = f"{qlen}I"  # no reference bases: htslib gives it one
        else:
            cigar = f"{qlen}M"
        reads.append((tid, rng.randint(0, REFS[tid][1] - 1), qlen, cigar, rng.choice([0, 16])))
    for _ in range(40):  # long reads, 1-100 kbp of sequence: records span many blocks
        tid = rng.choice(placed)
        qlen = rng.choice([rng.randint(1000, 10_000), rng.randint(1000, 100_000)])
        pos = rng.randint(0, max(0, REFS[tid][1] - qlen))
        reads.append((tid, pos, qlen, f"{qlen}M", 0))
    for _ in range(120):  # long reference spans with short records
        tid = rng.choice(placed)
        span = rng.randint(1000, 100_000)
        reads.append((tid, rng.randint(0, REFS[tid][1] - 1), 60, f"30M{span}D30M", 0))
    for _ in range(150):  # placed unmapped mates: their mate's position, flag 4, no CIGAR
        tid = rng.choice(placed)
        reads.append((tid, rng.randint(0, REFS[tid][1] - 1), 80, None, 1 | 4 | 64))
    unsorted = path.with_suffix(".unsorted.bam")
    with pysam.AlignmentFile(str(unsorted), "wb", header=header) as out:
        for i, (tid, pos, qlen, spelled, flag) in enumerate(reads):
            out.write(_segment(out.header, f"r{i}", tid, pos, qlen, spelled, flag, rng))
        for i in range(200):  # unplaced unmapped
            out.write(_segment(out.header, f"u{i}", -1, -1, 40, None, 4, rng))
    pysam.sort("-o", str(path), str(unsorted))
    unsorted.unlink()
    return path


def rechunk(path: Path, seed: int, smallest: int = 50, largest: int = 4000) -> None:
    """Re-compress a BGZF file into many small blocks of random size, so that records (and
    the header) are cut at random places and long records span dozens of blocks."""
    rng = random.Random(seed)
    data = bgzf.gunzip(path.read_bytes())
    out, pos = [], 0
    while pos < len(data):
        size = rng.randint(smallest, largest)
        out.append(bgzf.compress_block(data[pos:pos + size]))
        pos += size
    path.write_bytes(b"".join(out) + bgzf.EOF_MARKER)


def make_variants(path: Path, seed: int) -> Path:
    """A plain VCF (to be bgzipped) with SNVs, long REF deletions, symbolic alleles with END=
    and SVLEN (consistent or not), gVCF <*> blocks with END= or FORMAT/LEN, a '#' free body."""
    rng = random.Random(seed)
    lines = ["##fileformat=VCFv4.5"]
    lines += [f"##contig=<ID={c},length={ln}>" for c, ln in CONTIGS]
    lines += ['##INFO=<ID=END,Number=1,Type=Integer,Description="End">',
              '##INFO=<ID=SVLEN,Number=A,Type=Integer,Description="SV length">',
              '##INFO=<ID=SVTYPE,Number=1,Type=String,Description="SV type">',
              '##INFO=<ID=DP,Number=1,Type=Integer,Description="Depth">',
              '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
              '##FORMAT=<ID=LEN,Number=1,Type=Integer,Description="Block length">',
              "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ts1"]
    records = []
    for _ in range(1500):
        c = rng.choice([0, 1, 3])
        pos = rng.randint(1, CONTIGS[c][1])
        shape = rng.random()
        fmt, sample = "GT", "0/1"
        if shape < 0.6:
            ref, alt, info = rng.choice("ACGT"), rng.choice("ACGT"), f"DP={rng.randint(1, 99)}"
        elif shape < 0.7:  # long deletion spelled out in REF
            ref, alt, info = "".join(rng.choices("ACGT", k=rng.randint(2, 3000))), "A", "."
        elif shape < 0.85:  # symbolic SV with END= (and SVLEN, sometimes longer than END)
            kind = rng.choice(["DEL", "DUP", "INV", "CNV:TR", "INS"])
            length = rng.randint(1, 100_000)
            svlen = length + (rng.randint(0, 50_000) if rng.random() < 0.3 else 0)
            sign = "-" if kind == "DEL" else ""
            ref, alt = "N", f"<{kind}>"
            info = f"SVTYPE={kind.split(':')[0]};END={pos + length};SVLEN={sign}{svlen}"
        elif shape < 0.9:  # symbolic SV with SVLEN only
            kind = rng.choice(["DEL", "DUP"])
            ref, alt, info = "N", f"<{kind}>", f"SVLEN=-{rng.randint(1, 80_000)}"
        elif shape < 0.95:  # gVCF reference block with END=
            ref, alt, info = "A", "<*>", f"END={pos + rng.randint(0, 5000)}"
        else:  # gVCF block measured by FORMAT/LEN (VCF 4.5)
            ref, alt, info = "A", "<*>", "."
            fmt, sample = "GT:LEN", f"0/0:{rng.randint(1, 5000)}"
        records.append((c, pos, ref, alt, info, fmt, sample))
    records.sort(key=lambda r: (r[0], r[1]))
    for i, (c, pos, ref, alt, info, fmt, sample) in enumerate(records):
        lines.append(f"{CONTIGS[c][0]}\t{pos}\tv{i}\t{ref}\t{alt}\t50\tPASS\t{info}\t{fmt}"
                     f"\t{sample}")
    path.write_text("\n".join(lines) + "\n")
    return path


def make_dense_variants(path: Path, seed: int) -> Path:
    """A VCF dense enough (a record every ~30 bp, random values) that its index chunks are
    many: what lets a wide BCF region skip its middle. A few long SVs span the rest."""
    rng = random.Random(seed)
    lines = ["##fileformat=VCFv4.2"]
    lines += [f"##contig=<ID={c},length={ln}>" for c, ln in CONTIGS]
    lines += ['##INFO=<ID=END,Number=1,Type=Integer,Description="End">',
              '##INFO=<ID=DP,Number=1,Type=Integer,Description="Depth">',
              "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    i = 0
    for c, ln in CONTIGS:
        if c == "empty":
            continue
        pos = rng.randint(1, 50)
        while pos < ln:
            info = f"DP={rng.randint(1, 10**6)}"
            if rng.random() < 0.002:
                info += f";END={pos + rng.randint(1, 60_000)}"
            lines.append(f"{c}\t{pos}\td{i}\t{rng.choice('ACGT')}\t{rng.choice('ACGT')}"
                         f"\t{rng.random() * 100:.3f}\tPASS\t{info}")
            pos += rng.randint(1, 60)
            i += 1
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("exact")
    make_reads(d / "reads.bam", seed=21)
    pysam.index(str(d / "reads.bam"))
    make_reads(d / "small_csi.bam", seed=22)
    rechunk(d / "small_csi.bam", seed=1)
    pysam.index("-c", "-m", "12", str(d / "small_csi.bam"))
    make_reads(d / "small_bai.bam", seed=23)
    rechunk(d / "small_bai.bam", seed=2, smallest=2000, largest=30_000)
    pysam.index(str(d / "small_bai.bam"))
    pysam.tabix_index(str(make_variants(d / "sv.vcf", seed=31)), preset="vcf")
    pysam.tabix_index(str(make_variants(d / "sv_csi.vcf", seed=32)), preset="vcf", csi=True)
    rechunk(d / "sv_csi.vcf.gz", seed=3, smallest=30, largest=3000)
    (d / "sv_csi.vcf.gz.csi").unlink()
    pysam.tabix_index(str(d / "sv_csi.vcf.gz"), preset="vcf", csi=True, force=True)
    subprocess.run(["bcftools", "view", "-Ob", "-o", str(d / "sv.bcf"), str(d / "sv.vcf.gz")],
                   check=True)
    subprocess.run(["bcftools", "index", str(d / "sv.bcf")], check=True)
    dense = make_dense_variants(d / "dense.vcf", seed=33)
    subprocess.run(["bcftools", "view", "-Ob", "-o", str(d / "dense.bcf"), str(dense)],
                   check=True)
    rechunk(d / "dense.bcf", seed=4, smallest=100, largest=20_000)
    subprocess.run(["bcftools", "index", str(d / "dense.bcf")], check=True)
    subprocess.run(["bgzip", "-k", "-f", str(dense)], check=True)
    rechunk(d / "dense.vcf.gz", seed=5, smallest=100, largest=20_000)
    pysam.tabix_index(str(d / "dense.vcf.gz"), preset="vcf", force=True)
    return d


# --------------------------------------------------------------------------- helpers


def payload(engine: Htsget, root: Path, query: Query) -> bytes:
    """The ticket reassembled as a client would: inline blocks decoded, byte ranges read
    from the file under `root` that the /data url names."""
    out = []
    for block in engine.ticket(query).to_json()["htsget"]["urls"]:
        url = block["url"]
        if url.startswith("data:"):
            assert url.startswith("data:;base64,")
            out.append(base64.b64decode(url[len("data:;base64,"):]))
            continue
        key = url.split("/data/", 1)[1]
        if key.startswith("~~"):  # a derived block (a re-encoded CRAM container, say)
            out.append(engine.derived(key))
            continue
        first, last = block["headers"]["Range"][len("bytes="):].split("-")
        with open(root / key, "rb") as f:
            f.seek(int(first))
            out.append(f.read(int(last) - int(first) + 1))
    return b"".join(out)


class Case:
    """One data file: how to ask the engine for it and how pysam reads it."""

    def __init__(self, root: Path, name: str, fmt: Format) -> None:
        self.root, self.fmt = root, fmt
        self.id = name.removesuffix(".gz").rsplit(".", 1)[0]  # x.bam, x.vcf.gz, x.bcf -> x
        self.path = root / name
        self.reads = fmt in (Format.BAM, Format.CRAM)
        self.endpoint = Endpoint.READS if self.reads else Endpoint.VARIANTS
        with self.open(self.path) as f:
            if self.reads:
                self.lengths = dict(zip(f.header.references, f.header.lengths))
            else:
                self.lengths = {c: f.header.contigs[c].length for c in f.header.contigs}
            self.header = str(f.header)
            recs: list[Any] = list(f.fetch(until_eof=True) if self.reads else f)
            self.all = self.keys(recs)
            # region edges worth hitting: where records start and end
            if self.reads:
                self.edges = [(r.reference_name, r.reference_start,
                               r.reference_end or r.reference_start + 1)
                              for r in recs if r.reference_id >= 0]
            else:
                self.edges = [(r.chrom, r.start, r.stop) for r in recs]
        self.order = {k: i for i, k in enumerate(self.all)}
        assert len(self.order) == len(self.all)  # records are told apart by their text

    def open(self, path: Path) -> Any:  # pysam.AlignmentFile or pysam.VariantFile
        if self.reads:
            return pysam.AlignmentFile(str(path), check_sq=False)
        return pysam.VariantFile(str(path))

    def keys(self, records: object) -> list[str]:
        return [r.to_string() if self.reads else str(r) for r in records]  # type: ignore

    def expected(self, regions: Sequence[Region]) -> list[str]:
        """pysam's fetch for each region, deduplicated, in file order."""
        seen: set[str] = set()
        with self.open(self.path) as f:
            for r in regions:
                seen.update(self.keys(f.fetch(r.reference_name, r.start, r.end)))
        return sorted(seen, key=self.order.__getitem__)

    def got(self, engine: Htsget, regions: Optional[tuple[Region, ...]], tmp: Path,
            exact: bool = True) -> tuple[list[str], str]:
        q = Query(self.endpoint, self.id, self.fmt, regions=regions, exact=exact)
        return self.read(payload(engine, self.root, q), tmp)

    def read(self, data: bytes, tmp: Path) -> tuple[list[str], str]:
        """The records and header of a reassembled file (`data`), as pysam reads them."""
        out = tmp / f"out{''.join(self.path.suffixes)}"
        out.write_bytes(data)
        with self.open(out) as f:
            return self.keys(f.fetch(until_eof=True) if self.reads else f), str(f.header)

    def random_region(self, rng: random.Random) -> Region:
        if rng.random() < 0.5:  # an edge of some record, give or take a base
            ref, beg, end = rng.choice(self.edges)
            at = rng.choice([beg, end]) + rng.randint(-1, 1)
        else:
            ref = rng.choice(list(self.lengths))
            at = rng.randint(0, self.lengths[ref])
        width = rng.choice([1, 2, rng.randint(1, 500), rng.randint(1, 20_000),
                            rng.randint(1, 200_000)])
        start = max(0, at - rng.randint(0, width))
        shape = rng.random()
        if shape < 0.05:
            return Region(ref)
        if shape < 0.12:
            return Region(ref, start, None)
        if shape < 0.15:
            return Region(ref, None, start + width)
        return Region(ref, start, start + width)


CASES = [("reads.bam", Format.BAM), ("small_csi.bam", Format.BAM),
         ("small_bai.bam", Format.BAM), ("sv.vcf.gz", Format.VCF),
         ("sv_csi.vcf.gz", Format.VCF), ("sv.bcf", Format.BCF), ("dense.bcf", Format.BCF),
         ("dense.vcf.gz", Format.VCF)]


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name,fmt", CASES, ids=[c[0] for c in CASES])
def test_exact_matches_htslib(data: Path, tmp_path: Path, name: str, fmt: Format) -> None:
    """Random regions and multi-region tuples: the whole record list equals pysam's."""
    case = Case(data, name, fmt)
    engine = Htsget(for_data_dir(str(data)))
    rng = random.Random(sum(map(ord, name)))
    for i in range(70):
        n = 1 if i < 30 else rng.randint(2, 5)
        regions = tuple(case.random_region(rng) for _ in range(n))
        if n > 1 and rng.random() < 0.3:  # the same records asked for twice
            regions += (regions[0],)
        got, header = case.got(engine, regions, tmp_path)
        want = case.expected(regions)
        assert header == case.header
        assert got == want, (regions, len(got), len(want),
                             [g for g in got if g not in want][:2],
                             [w for w in want if w not in got][:2])


EOF_URL = "data:;base64," + base64.b64encode(bgzf.EOF_MARKER).decode()


def test_adjacent_edges_share_one_data_url(data: Path, tmp_path: Path) -> None:
    """Records of a region interleaved with others' (spliced and long reads) leave one run
    of records, with its two re-cut edges, per gap: adjacent inline edges go in one data:
    url (several BGZF blocks in it), never two entries side by side, and the records stay
    htslib's."""
    case = Case(data, "small_csi.bam", Format.BAM)
    engine = Htsget(for_data_dir(str(data)))
    rng = random.Random(7)
    blocks_in_one = 0
    for _ in range(40):
        ref = rng.choice([r for r in case.lengths if case.lengths[r] > 60_000])
        start = rng.randint(0, case.lengths[ref] - 50_000)
        region = Region(ref, start, start + rng.randint(5_000, 50_000))
        q = Query(case.endpoint, case.id, case.fmt, regions=(region,))
        urls = engine.ticket(q).to_json()["htsget"]["urls"]
        recuts = [u.get("class") if u["url"].startswith("data:") and u["url"] != EOF_URL
                  else None for u in urls]
        assert not any(a and a == b for a, b in zip(recuts, recuts[1:])), urls
        for u in urls:
            if u["url"].startswith("data:"):
                raw = base64.b64decode(u["url"][len("data:;base64,"):])
                blocks_in_one = max(blocks_in_one, raw.count(b"\x1f\x8b\x08\x04"))
        got, _ = case.got(engine, (region,), tmp_path)
        assert got == case.expected((region,)), region
    assert blocks_in_one > 2  # edges were joined


@pytest.mark.parametrize("name,fmt", CASES, ids=[c[0] for c in CASES])
def test_no_regions_is_an_empty_file(data: Path, tmp_path: Path, name: str,
                                     fmt: Format) -> None:
    """regions=() (a rule that allows nothing of what was asked): header + EOF, 0 records."""
    case = Case(data, name, fmt)
    engine = Htsget(for_data_dir(str(data)))
    q = Query(case.endpoint, case.id, fmt, regions=(), exact=True)
    raw = payload(engine, data, q)
    assert raw.endswith(bgzf.EOF_MARKER)
    got, header = case.got(engine, (), tmp_path)
    assert got == [] and header == case.header


@pytest.mark.parametrize("name,fmt", CASES, ids=[c[0] for c in CASES])
def test_whole_references(data: Path, tmp_path: Path, name: str, fmt: Format) -> None:
    """Every reference whole (a rule naming no reference, expanded): all placed records."""
    case = Case(data, name, fmt)
    engine = Htsget(for_data_dir(str(data)))
    handler = engine.handler(fmt)
    names = handler.reference_names(engine.locate(case.id, fmt))  # type: ignore[attr-defined]
    assert names == list(case.lengths)
    regions = tuple(Region(n) for n in names)
    got, _ = case.got(engine, regions, tmp_path)
    assert got == case.expected(regions)
    one = names[-1]
    got, _ = case.got(engine, (Region(one, 1),), tmp_path)
    assert got == case.expected((Region(one, 1),))


def test_unplaced_reads(data: Path, tmp_path: Path) -> None:
    """referenceName=*: exactly the unplaced unmapped reads, whatever `exact` says."""
    engine = Htsget(for_data_dir(str(data)))
    regions = (Region("*"),)
    for strict in (False, True):
        q = Query(Endpoint.READS, "reads", Format.BAM, regions=regions, exact=strict)
        assert engine.ticket(q).to_json() == engine.ticket(
            Query(Endpoint.READS, "reads", Format.BAM, regions=regions)).to_json()
    case = Case(data, "reads.bam", Format.BAM)
    got, _ = case.got(engine, regions, tmp_path)
    with pysam.AlignmentFile(str(case.path)) as f:
        want = [r.to_string() for r in f.fetch(until_eof=True) if r.reference_id < 0]
    assert got == want and len(got) == 200


def test_read_between_overlapping_reads_is_left_out(tmp_path: Path) -> None:
    """A short read that starts and ends before the region, filed between two long reads
    that reach into it: no ticket may hold it (the old budgeted trim kept it)."""
    d = tmp_path / "between"
    d.mkdir()
    rng = random.Random(5)
    header = pysam.AlignmentHeader.from_dict({"HD": {"VN": "1.6", "SO": "coordinate"},
                                              "SQ": [{"SN": "c1", "LN": 1_000_000}]})
    with pysam.AlignmentFile(str(d / "u.bam"), "wb", header=header) as out:
        shapes = [(1000, "50M60000D50M"), (2000, "100M"), (3000, "50M60000D50M"),
                  (40_000, "100M"), (70_000, "100M")]
        for i, (pos, cigar) in enumerate(shapes):
            out.write(_segment(out.header, f"r{i}", 0, pos, 100, cigar, 0, rng))
    pysam.sort("-o", str(d / "b.bam"), str(d / "u.bam"))
    pysam.index(str(d / "b.bam"))
    engine = Htsget(for_data_dir(str(d)))
    case = Case(d, "b.bam", Format.BAM)
    region = (Region("c1", 50_000, 60_000),)
    for strict in (False, True):
        got, _ = case.got(engine, region, tmp_path, exact=strict)
        assert [g.split("\t")[0] for g in got] == ["r0", "r2"] == \
            [w.split("\t")[0] for w in case.expected(region)]


@pytest.mark.parametrize("name,fmt", CASES, ids=[c[0] for c in CASES])
def test_exact_is_the_default(data: Path, name: str, fmt: Format) -> None:
    """Every region ticket is record-exact: `exact=False` gives the same ticket."""
    case = Case(data, name, fmt)
    rng = random.Random(7)
    engine = Htsget(for_data_dir(str(data)))
    for _ in range(15):
        regions = tuple(case.random_region(rng) for _ in range(rng.randint(1, 3)))
        loose = engine.ticket(Query(case.endpoint, case.id, fmt, regions=regions))
        exact = engine.ticket(Query(case.endpoint, case.id, fmt, regions=regions, exact=True))
        assert loose.to_json() == exact.to_json()


def test_chunks_clamped_to_the_linear_index(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Walks start at htslib's min_off (linear index / bin loffset), never at the first
    record of a wide bin, and stop before max_off; `bounds` computes both as htslib does."""
    import ranges_twin

    starts: list[tuple[int, int, int]] = []
    original = exact._Walk.chunk

    def chunk(self: exact._Walk, vbeg: int, vend: int) -> tuple[int, int]:
        starts.append((vbeg, vend, self.index_ref))
        return original(self, vbeg, vend)

    monkeypatch.setattr(exact._Walk, "chunk", chunk)
    engine = Htsget(for_data_dir(str(data)))
    rng = random.Random(3)
    for name, twin_parse in [("reads.bam", ranges_twin.parse_bai),
                             ("small_csi.bam", ranges_twin.parse_csi)]:
        raw = (data / name).with_name(name + (".bai" if name == "reads.bam" else ".csi"))
        blob = raw.read_bytes()
        twin = twin_parse(bgzf.gunzip(blob) if blob[:2] == b"\x1f\x8b" else blob)
        case = Case(data, name, Format.BAM)
        bam = engine.handler(Format.BAM).open(engine.locate(case.id, Format.BAM))  # type: ignore
        clamped = 0
        for _ in range(60):
            region = case.random_region(rng)
            if region.start is None or region.end is None:
                continue
            tid = bam.ref_ids[region.reference_name]
            lo, hi = bam.index.bounds(tid, region.start, region.end)
            ref = twin.refs[tid]
            assert lo == (twin.min_off(ref, region.start) if ref.bins else 0)
            assert hi == _twin_max_off(twin, ref, region.end if ref.bins else 0)
            starts.clear()
            engine.ticket(Query(Endpoint.READS, case.id, Format.BAM, regions=(region,)))
            assert all(lo <= vbeg and vend <= hi for vbeg, vend, _ in starts)
            found = bam.index.query(tid, region.start, region.end)
            clamped += any(u < lo for u, _ in found)
        if name == "reads.bam":  # BAI: many chunks start before the linear index's offset
            assert clamped > 5


def _twin_max_off(twin: Any, ref: Any, end: int) -> int:
    """hts_itr_query's max_off from the twin's bins: the first chunk of the nearest bin
    right of end, moving up at a first child; all-ones when there is none."""
    if end <= 0 or not ref.bins:
        return (1 << 64) - 1
    end = min(end, twin.max_coord)
    b = ranges_twin.bin_first(twin.depth) + ((end - 1) >> twin.min_shift) + 1
    if b >= twin.n_bins:
        b = 0
    while True:
        while b % 8 == 1:
            b = ranges_twin.bin_parent(b)
        if b == 0:
            return (1 << 64) - 1
        if b in ref.bins and ref.bins[b][1]:
            return int(ref.bins[b][1][0][0])
        b += 1


def test_the_guard_is_logged_and_keeps_a_superset(data: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Past the scan guard (pathological files only) the walk gives up being exact: a
    warning names the file, and the ticket still holds every record htslib returns."""
    monkeypatch.setattr(exact, "WALK_GUARD_BYTES", 1)
    engine = Htsget(for_data_dir(str(data)))
    warnings = supersets = 0
    for name, fmt in CASES:
        case = Case(data, name, fmt)
        ref = max(case.lengths, key=case.lengths.__getitem__)
        regions = (Region(ref, 100_000, 100_300), Region(ref, 130_000, 190_000))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="htsgetr.formats.exact"):
            got, _ = case.got(engine, regions, tmp_path)
        want = case.expected(regions)
        assert set(want) <= set(got) and len(got) == len(set(got)), name
        # (a walk within one block never meets the guard: sparse VCF/BCF may not)
        warned = any(case.path.name in r.getMessage() and "superset" in r.getMessage()
                     and f"{ref}:130000-190000" in r.getMessage() for r in caplog.records)
        assert warned or fmt is not Format.BAM, name
        if warned:
            warnings += 1
            supersets += len(got) > len(want)
    assert warnings >= 5 and supersets >= 3


def test_the_guard_is_never_hit_by_long_reads(data: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """Reads of 1-100 kbp and deletions of 100 kbp (reads.bam) walk far below the guard."""
    engine = Htsget(for_data_dir(str(data)))
    case = Case(data, "reads.bam", Format.BAM)
    rng = random.Random(11)
    walked: list[int] = []
    original = exact._Walk.run

    def run(self: exact._Walk, todo: list[tuple[int, int]], start: int = 0
            ) -> list[tuple[int, int]]:
        out = original(self, todo, start)
        walked.append(self.walked)
        return out

    with caplog.at_level(logging.WARNING, logger="htsgetr.formats.exact"), \
            pytest.MonkeyPatch.context() as mp:
        mp.setattr(exact._Walk, "run", run)
        for _ in range(40):
            regions = (case.random_region(rng),)
            assert case.got(engine, regions, tmp_path)[0] == case.expected(regions)
    assert not caplog.records
    assert walked and max(walked) < exact.WALK_GUARD_BYTES // 16


@pytest.mark.parametrize("name,fmt", [("small_bai.bam", Format.BAM), ("small_csi.bam", Format.BAM),
                                      ("dense.bcf", Format.BCF), ("dense.vcf.gz", Format.VCF)])
def test_regions_skip_their_middle(data: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch, name: str,
                                   fmt: Format) -> None:
    """A BAM/BCF/VCF region skips from its first record starting inside it to a record
    boundary near its end, and is still exact; a failed skip just walks on."""
    skips: list[Optional[int]] = []
    original = exact._Walk._skip_target

    def counted(self: exact._Walk, start: int) -> Optional[int]:
        skips.append(original(self, start))
        return skips[-1]

    monkeypatch.setattr(exact._Walk, "_skip_target", counted)
    case = Case(data, name, fmt)
    engine = Htsget(for_data_dir(str(data)))
    rng = random.Random(9)
    ref = max(case.lengths, key=case.lengths.__getitem__)
    for i in range(16):
        start = rng.randint(0, case.lengths[ref] // 2)
        width = rng.randint(70_000, case.lengths[ref] // 2) if i % 2 else rng.randint(2000, 20_000)
        regions = (Region(ref, start, start + width),)
        got, _ = case.got(engine, regions, tmp_path)
        assert got == case.expected(regions)
    assert any(s is not None for s in skips) and skips.count(None) < len(skips)


def test_vcf_comment_lines_in_the_body(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """'#' lines in a VCF body (two bgzipped files concatenated): htslib skips them, and so
    does every walk that meets one; the file is named in a warning and skips no more."""
    d = tmp_path / "hash"
    d.mkdir()
    make_dense_variants(d / "a.vcf", seed=41)
    text = (d / "a.vcf").read_text().split("\n")
    header = [line for line in text if line.startswith("#")]
    body = [line for line in text if line and not line.startswith("#")]
    half = len(body) // 3
    (d / "h.vcf").write_text("\n".join(header + body[:half] + header + body[half:]) + "\n")
    pysam.tabix_index(str(d / "h.vcf"), preset="vcf")
    case = Case.__new__(Case)
    case.root, case.fmt, case.id, case.path = d, Format.VCF, "h", d / "h.vcf.gz"
    case.reads, case.endpoint = False, Endpoint.VARIANTS
    with pysam.VariantFile(str(case.path)) as f:
        case.header = str(f.header)
        recs = [str(r) for c in f.header.contigs if c in f.index for r in f.fetch(c)]
        case.order = {r: i for i, r in enumerate(recs)}
    ref, at = body[half].split("\t")[:2]
    engine = Htsget(for_data_dir(str(d)))
    # a narrow region walks over the '#' lines first (a wide one meeting them first would
    # skip them unseen: the one case where a ticket holds more than htslib's records)
    with caplog.at_level(logging.WARNING, logger="htsgetr.formats.exact"):
        for beg, end in [(int(at) - 40, int(at) + 10), (int(at) - 3000, int(at) + 3000),
                         (int(at) - 200_000, int(at) + 20), (int(at) - 50, int(at) + 100_000)]:
            regions = (Region(ref, max(0, beg), end),)
            got, _ = case.got(engine, regions, tmp_path)
            assert got == case.expected(regions), (beg, end)
    assert any("h.vcf.gz" in r.getMessage() for r in caplog.records)


def test_zero_length_regions(data: Path, tmp_path: Path) -> None:
    """start == end (GET allows it): htslib returns nothing there, nor may we."""
    engine = Htsget(for_data_dir(str(data)))
    for name, fmt in CASES:
        case = Case(data, name, fmt)
        ref, beg, end = case.edges[len(case.edges) // 2]
        regions = tuple(Region(ref, x, x) for x in (beg, beg + 1, end - 1))
        assert case.expected(regions) == []
        assert case.got(engine, regions, tmp_path)[0] == []


@pytest.mark.parametrize("kind,name,fmt", [("bam", "htsnexus_test_NA12878.bam", Format.BAM),
                                           ("vcf", "spec-v4.3.vcf.gz", Format.VCF),
                                           ("vcf", "sample1-bcbio-cancer.vcf.gz", Format.VCF),
                                           ("bcf", "spec-v4.3.bcf", Format.BCF),
                                           ("bcf", "sample1-bcbio-cancer.bcf", Format.BCF)])
def test_reference_files(tmp_path: Path, kind: str, name: str, fmt: Format) -> None:
    """The public htsget test files (real reads of NA12878, the VCF spec example)."""
    root = shared(kind, name).parent
    case = Case(root, name, fmt)
    engine = Htsget(for_data_dir(str(root)))
    rng = random.Random(13)
    spans: dict[str, tuple[int, int]] = {}
    for ref, beg, end in case.edges:
        lo, hi = spans.get(ref, (beg, end))
        spans[ref] = (min(lo, beg), max(hi, end))
    for i in range(40):
        regions = []
        for _ in range(1 if i < 20 else rng.randint(2, 4)):
            ref = rng.choice(sorted(spans))
            lo, hi = spans[ref]
            start = rng.randint(max(0, lo - 100), hi + 100)
            regions.append(Region(ref, start, start + rng.choice([1, 50, 2000, 40_000])))
        got, header = case.got(engine, tuple(regions), tmp_path)
        assert header == case.header
        assert got == case.expected(regions), regions
    whole = tuple(Region(ref) for ref in spans)
    assert case.got(engine, whole, tmp_path)[0] == case.expected(whole)


@pytest.mark.skipif(shutil.which("bcftools") is None, reason="bcftools not installed")
@pytest.mark.parametrize("kind", ["vcf", "bcf"])
def test_depth_10_csi_from_htslib(tmp_path: Path, kind: str) -> None:
    """`bcftools index -m 4` on a ~2 Gbp contig writes a CSI of depth 10, where htslib's
    32-bit arithmetic numbers the pseudo-bin 1 (not CSIv1's 1227133514): such an index is
    htslib's own and must serve (found by tests/test_diff_fuzz.py; it was refused as corrupt,
    a 500)."""
    import sys

    from conftest import ROOT, assert_ticket_records

    from htsgetr.app import create_app
    from htsgetr.config import for_data_dir

    sys.path.insert(0, str(ROOT / "bench"))
    from exactness import reassemble_via

    length = 2_147_483_393
    vcf = tmp_path / "deep.vcf"
    lines = ["##fileformat=VCFv4.2", "##contig=<ID=1,length=1000>",
             f"##contig=<ID=big,length={length}>",
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    lines += [f"1\t{p}\tv{p}\tA\tG\t50\tPASS\t." for p in (10, 500)]
    lines += [f"big\t{p}\tw{p}\tA\tG\t50\tPASS\t." for p in (5, 1_000_000, 1_627_694_679,
                                                             2_100_000_000)]
    vcf.write_text("\n".join(lines) + "\n")
    data = tmp_path / "data"
    data.mkdir()
    path = data / ("calls.vcf.gz" if kind == "vcf" else "calls.bcf")
    subprocess.run(["bcftools", "view", "-O", "z" if kind == "vcf" else "b", "-o", str(path),
                    str(vcf)], check=True)
    subprocess.run(["bcftools", "index", "-m", "4", str(path)], check=True)
    client = create_app(for_data_dir(str(data))).test_client()
    for region in [("big", 1_627_690_000, 1_627_700_000), ("big", 0, 2_000_000),
                   ("1", None, None), ("big", 2_000_000_000, length)]:
        query = f"format={kind.upper()}&referenceName={region[0]}" + (
            f"&start={region[1]}&end={region[2]}" if region[1] is not None else "")
        r = client.get(f"/variants/calls?{query}")
        assert r.status_code == 200, r.get_data()[:300]
        assert_ticket_records(reassemble_via(client, r.get_json()), tmp_path, path, [region])


def test_long_cigars_long_spans_pileups_and_a_700_mbp_reference(tmp_path: Path) -> None:
    """Reads whose CIGAR has more than 65,535 operations (stored in the CG tag, the record's
    own CIGAR then `<qlen>S<rlen>N`: SAMv1 4.2.2), 0.1-2 Mbp deletions, 4,000 reads at one
    position, and a 700 Mbp reference (a CSI: BAI bins end at 512 Mbp), as BAM and as CRAM:
    random single and multi-region tickets hold exactly htslib's records."""
    rng = random.Random(3)
    refs = [("c1", 5_000_000), ("c2", 700_000_000)]
    header = pysam.AlignmentHeader.from_dict({
        "HD": {"VN": "1.6", "SO": "coordinate"},
        "SQ": [{"SN": n, "LN": ln} for n, ln in refs]})
    reads: list[tuple[int, int, int, Optional[str], int]] = []
    for tid in range(len(refs)):
        reads += [(tid, rng.randint(0, 4_999_999), 100, "100M", 0) for _ in range(1500)]
        reads += [(tid, rng.randint(0, 4_000_000), 66_000, "1M1I" * 33_000, 0)
                  for _ in range(3)]
        reads += [(tid, rng.randint(0, 3_000_000), 60,
                   f"30M{rng.randint(100_000, 2_000_000)}D30M", 0) for _ in range(20)]
        at = rng.randint(0, 4_000_000)
        reads += [(tid, at, 150, "150M", 16) for _ in range(4000)]
    reads += [(1, rng.randint(600_000_000, 699_000_000), 100, "100M", 0) for _ in range(20)]
    root = tmp_path / "data"
    root.mkdir()
    unsorted = tmp_path / "unsorted.bam"
    with pysam.AlignmentFile(str(unsorted), "wb", header=header) as out:
        for i, (tid, pos, qlen, cigar, flag) in enumerate(reads):
            out.write(_segment(out.header, f"r{i}", tid, pos, qlen, cigar, flag, rng))
    pysam.sort("-o", str(root / "long.bam"), str(unsorted))
    pysam.index("-c", str(root / "long.bam"))
    assert bgzf.gunzip((root / "long.bam").read_bytes()).count(b"CGBI") == 6  # in CG tags
    subprocess.run(["samtools", "view", "-C", "--output-fmt-option", "no_ref=1", "-o",
                    str(root / "long_c.cram"), str(root / "long.bam")], check=True)
    subprocess.run(["samtools", "index", str(root / "long_c.cram")], check=True)
    bam = Case(root, "long.bam", Format.BAM)
    cram = Case(root, "long_c.cram", Format.CRAM)
    engine = Htsget(for_data_dir(str(root)))
    for i in range(160):
        regions = tuple(bam.random_region(rng) for _ in range(1 if i < 120 else 3))
        for case in (bam, cram) if i % 4 == 0 else (bam,):
            got, _ = case.got(engine, regions, tmp_path)
            assert got == case.expected(regions), (case.path.name, regions)


def _long_record_files(d: Path, size: int) -> dict[str, tuple[Path, int]]:
    """A VCF, BCF and BAM, each with one record of ~`size` bytes (a biobank VCF line of
    hundreds of thousands of samples, an ultra-long read) among short ones; with the
    0-based position of that record."""
    lines = ["##fileformat=VCFv4.2", "##contig=<ID=1,length=1000000>",
             '##INFO=<ID=XX,Number=1,Type=String,Description="x">',
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    for i in range(1, 1500):
        info = "XX=" + ("ACGT" * (size // 4) if i == 700 else "b")
        lines.append(f"1\t{i * 400}\tv{i}\tA\tG\t50\tPASS\t{info}")
    (d / "long.vcf").write_text("\n".join(lines) + "\n")
    pysam.tabix_index(str(d / "long.vcf"), preset="vcf", force=True)
    subprocess.run(["bcftools", "view", "-Ob", "-o", str(d / "long.bcf"),
                    str(d / "long.vcf.gz")], check=True)
    subprocess.run(["bcftools", "index", str(d / "long.bcf")], check=True)
    header = pysam.AlignmentHeader.from_dict({"HD": {"VN": "1.6", "SO": "coordinate"},
                                              "SQ": [{"SN": "chr1", "LN": 1_000_000}]})
    with pysam.AlignmentFile(str(d / "long.bam"), "wb", header=header) as out:
        for i in range(1, 1500):
            seg = pysam.AlignedSegment(out.header)
            seg.query_name, seg.reference_id, seg.reference_start = f"r{i}", 0, i * 400 - 1
            seg.query_sequence, seg.cigarstring, seg.mapping_quality = "ACGT" * 25, "100M", 60
            if i == 700:
                seg.set_tag("XX", "ACGT" * (size // 4))
            out.write(seg)
    pysam.index(str(d / "long.bam"))
    return {"VCF": (d / "long.vcf.gz", 700 * 400 - 1), "BCF": (d / "long.bcf", 700 * 400 - 1),
            "BAM": (d / "long.bam", 700 * 400 - 1)}


@pytest.mark.parametrize("fmt", ["VCF", "BCF", "BAM"])
def test_a_record_over_many_blocks_is_looked_at_once(tmp_path: Path, fmt: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A record running over many BGZF blocks is gathered once and walked once it is whole:
    the bytes handed to the record walker, and copied to gather it, stay within a few times
    its size. (They grew with its square: a 60 MB VCF line in a 107 KB file took 15 s of
    CPU per ticket, the walker re-reading and re-copying the line at every block.)"""
    from conftest import assert_ticket_records

    size = 4 << 20  # 64 blocks' worth of record
    path, at = _long_record_files(tmp_path, size)[fmt]
    seen = {"walked": 0, "copied": 0}
    real = exact._records

    class Counting:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        @staticmethod
        def runs(buf: Any, pos: int, *args: Any) -> Any:
            seen["walked"] += len(buf) - pos
            return real.runs(buf, pos, *args)

    class CountingBytearray(bytearray):
        def __init__(self, data: Any = b"") -> None:
            seen["copied"] += len(data)
            super().__init__(data)

    monkeypatch.setattr(exact, "_records", Counting())
    monkeypatch.setattr(exact, "bytearray", CountingBytearray, raising=False)
    engine = Htsget(for_data_dir(str(tmp_path)))
    endpoint = Endpoint.READS if fmt == "BAM" else Endpoint.VARIANTS
    name = "chr1" if fmt == "BAM" else "1"
    for beg, end in [(at - 1000, at + 1000), (at, at + 1), (at - 300, at - 100),
                     (at + 50, at + 2000)]:
        seen.update(walked=0, copied=0)
        query = Query(endpoint, "long", Format(fmt), None, (Region(name, beg, end),))
        got = payload(engine, tmp_path, query)
        assert seen["walked"] < 3 * size and seen["copied"] < 3 * size, (beg, end, seen)
        assert_ticket_records(got, tmp_path, path, [(name, beg, end)])
