"""Waypoints (formats/waypoints.py): record boundaries earlier walks passed, where later
region walks start and skip to. They must never cost a record: after hundreds of walks have
filled the tables, every region's records still equal htslib's, on files with 100 kbp reads
spanning dozens of small blocks, spliced reads and SV records reaching far past their start.
And they must pay: warm walks inflate fewer blocks than cold ones.
"""

from __future__ import annotations

import random
from pathlib import Path

import pysam
import pytest
from test_exact import Case, data  # noqa: F401  (the fixture, shared)

from htsgetr import Htsget, Region
from htsgetr.config import for_data_dir
from htsgetr.formats import bgzf, waypoints
from htsgetr.formats.waypoints import Waypoints
from htsgetr.protocol import Format


def test_table() -> None:
    w = Waypoints(capacity=100)
    assert w.start(0, 10, 500) == 10 and w.last_inside(0, 0, 100, 0, 1 << 60) is None
    w.learn(0, 100, 300)
    w.learn(0, 200, 450)
    w.learn(0, 300, 700)
    w.learn(0, 400, 600)  # a loose reach after a larger one: not looked past
    w.learn(1, 150, 0)
    assert w.start(0, 10, 449) == 100
    assert w.start(0, 10, 450) == 200  # records before 200 end by 450: none overlaps 450
    assert w.start(0, 10, 10_000) == 400
    assert w.start(0, 250, 450) == 250  # never before the index's bound
    assert w.start(2, 5, 10_000) == 5
    assert w.start(0, 10, 640) == 200  # 300's reach (700) passes 640: looks no further
    w.learn(0, 300, 630)  # tighter: kept
    assert w.start(0, 10, 640) == 400
    w.learn(0, 300, 690)  # looser: ignored
    assert w.start(0, 10, 640) == 400
    # heads: the furthest record boundary whose record starts inside (beg, end)
    for v, start in [(100, 1000), (200, 1100), (300, 1200), (400, 1200), (500, 1300)]:
        w.learn_head(0, v, start)
    assert w.head(0, 300) == 1200 and w.head(0, 301) is None and w.head(5, 300) is None
    assert w.last_inside(0, 1000, 1250, 0, 1 << 60) == 400
    assert w.last_inside(0, 1000, 1200, 0, 1 << 60) == 200
    assert w.last_inside(0, 1100, 1200, 0, 1 << 60) is None  # 1100 is not after beg
    assert w.last_inside(0, 1000, 1250, 400, 1 << 60) is None  # none after `after`
    assert w.last_inside(0, 1000, 1250, 0, 400) == 300  # below `upper`
    # a full table starts again: memory stays bounded
    for v in range(1000, 1200):
        w.learn(3, v, v)
    assert len(w) <= w.capacity and w.nbytes == 100 * waypoints.WAYPOINT_BYTES


def test_table_reach_break_is_conservative() -> None:
    """`start` looks no further than the first waypoint whose reach passes the region's
    start, even when a later one is tighter: a loose fact never moves the start forward."""
    w = Waypoints()
    w.learn(0, 100, 50)
    w.learn(0, 200, 5000)
    w.learn(0, 300, 60)  # (impossible in a sorted file; a guard against a bad fact)
    assert w.start(0, 0, 100) == 100


CASES = [("reads.bam", Format.BAM), ("small_csi.bam", Format.BAM),
         ("small_bai.bam", Format.BAM), ("sv_csi.vcf.gz", Format.VCF),
         ("sv.bcf", Format.BCF), ("dense.bcf", Format.BCF), ("dense.vcf.gz", Format.VCF)]


def _clustered_region(case: Case, rng: random.Random, centres: list[tuple[str, int]]) -> Region:
    """Regions crowded around a few places, so that their walks cross each other's
    waypoints: starts just past some record's end, widths from 1 bp to 60 kbp."""
    if rng.random() < 0.5:
        ref, beg, end = rng.choice(case.edges)
        at = rng.choice([beg, end]) + rng.randint(-1, 1)
    else:
        ref, c = rng.choice(centres)
        at = max(0, c + rng.randint(-30_000, 30_000))
    width = rng.choice([1, 2, rng.randint(1, 500), rng.randint(1, 5000), rng.randint(1, 60_000)])
    start = max(0, at - rng.randint(0, width))
    return Region(ref, start, start + width)


@pytest.mark.parametrize("name,fmt", CASES, ids=[c[0] for c in CASES])
def test_warm_walks_hold_htslibs_records(data: Path, tmp_path: Path,  # noqa: F811
                                         name: str, fmt: Format,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """One engine, 250 regions: every ticket's records equal pysam's, the whole list, while
    the waypoints its walks learned move later walks' starts and skips."""
    case = Case(data, name, fmt)
    engine = Htsget(for_data_dir(str(data)))
    rng = random.Random(sum(map(ord, name)) + 7)
    centres = [(ref, rng.randint(0, ln)) for ref, ln in case.lengths.items() for _ in range(3)]
    moved = {"start": 0, "skip": 0}
    start, last_inside = Waypoints.start, Waypoints.last_inside

    def counting_start(self: Waypoints, ref: int, lower: int, beg: int) -> int:
        out = start(self, ref, lower, beg)
        moved["start"] += out > lower
        return out

    def counting_last_inside(self: Waypoints, *a: int) -> object:
        out = last_inside(self, *a)
        moved["skip"] += out is not None
        return out

    monkeypatch.setattr(Waypoints, "start", counting_start)
    monkeypatch.setattr(Waypoints, "last_inside", counting_last_inside)
    for _ in range(250):
        region = _clustered_region(case, rng, centres)
        got, _ = case.got(engine, (region,), tmp_path)
        want = case.expected((region,))
        assert got == want, (region, len(got), len(want),
                             [g for g in got if g not in want][:2],
                             [w for w in want if w not in got][:2])
    print(name, moved)
    assert moved["start"] > 10, moved  # the waypoints were used, not just kept


def test_warm_walks_inflate_fewer_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deep BAM (~30x of 150 bp reads): the same 300 random regions, asked again of a warm
    engine, inflate far fewer blocks than of a cold one, and give the same tickets."""
    ln = 400_000
    header = {"HD": {"VN": "1.6", "SO": "coordinate"}, "SQ": [{"SN": "chrD", "LN": ln}]}
    rng = random.Random(3)
    starts = sorted(rng.randrange(0, ln - 200) for _ in range(ln * 30 // 150))
    path = tmp_path / "deep.bam"
    with pysam.AlignmentFile(str(path), "wb", header=header) as out:
        for i, pos in enumerate(starts):
            a = pysam.AlignedSegment(out.header)
            a.query_name, a.reference_id, a.reference_start = f"r{i}", 0, pos
            a.query_sequence = "".join(rng.choice("ACGT") for _ in range(150))
            a.query_qualities = pysam.qualitystring_to_array("".join(
                rng.choice("#+5?I") for _ in range(150)))
            a.cigarstring, a.flag, a.mapping_quality = "150M", 0, 60
            out.write(a)
    pysam.index(str(path))
    inflated = 0
    decompress = bgzf.decompress_block

    def counting(block: bytes) -> bytes:
        nonlocal inflated
        inflated += 1
        return decompress(block)

    monkeypatch.setattr(bgzf, "decompress_block", counting)
    config = for_data_dir(str(tmp_path))
    config.block_cache_bytes = 1 << 20  # a few blocks: the waypoints, not the cache, help
    queries = [Region("chrD", s, s + rng.randint(1000, 20_000))
               for s in (rng.randrange(0, ln - 20_000) for _ in range(300))]
    case = Case(tmp_path, "deep.bam", Format.BAM)

    def run(engine: Htsget) -> tuple[int, list[object]]:
        nonlocal inflated
        inflated = 0
        tickets = [engine.ticket(case_query(q)).to_json() for q in queries]
        return inflated, tickets

    def case_query(region: Region) -> object:
        from htsgetr import Query
        return Query(case.endpoint, case.id, case.fmt, regions=(region,))

    engine = Htsget(config)
    cold, first = run(engine)
    warm, again = run(engine)
    assert again == first
    assert warm < cold * 0.6, (cold, warm)
    for region in queries[:40]:  # and the warm tickets are still exact
        got, _ = case.got(engine, (region,), tmp_path)
        assert got == case.expected((region,))


def _assert_between_chunks_exact(case: Case, root: Path) -> None:
    """One engine: `[0, 1)` first (its walk jumps to the long record's chunk), then regions
    at the short records it passed over; each ticket's records equal pysam's."""
    engine = Htsget(for_data_dir(str(root)))
    for regions in [(Region("0", 0, 1),), (Region("0", 14044, 14047),),
                    (Region("0", None, 1), Region("0", 14044, None)),
                    (Region("0", 8000, 9000),), (Region("0", 23000, 23200),)]:
        got, _ = case.got(engine, regions, root)
        assert got == case.expected(regions), regions


@pytest.mark.parametrize("kind", ["vcf", "bcf"])
def test_records_between_chunks_are_not_vouched_for(tmp_path: Path, kind: str) -> None:
    """A region near the start whose only chunk is a long record's (a high bin), with short
    records after the region but before that chunk: its walk passes them over unread, so it
    must not tell later walks that they end before it (found by the differential fuzzer:
    the next region lost them)."""
    import subprocess

    from test_exact import rechunk

    text = tmp_path / "x.vcf"
    text.write_text("\n".join([
        "##fileformat=VCFv4.3", "##contig=<ID=0,length=300000>",
        '##INFO=<ID=END,Number=1,Type=Integer,Description="End">',
        '##ALT=<ID=DEL,Description="Deletion">', '##ALT=<ID=INS,Description="Insertion">',
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO",
        "0\t8866\ta\tTCTGTCTTGCCCTCTACCTG\tT\t50\tPASS\t.",
        "0\t14045\tb\tT\t<INS>\t50\tPASS\tEND=14046",
        "0\t22932\tc\tA\t<DEL>\t50\tPASS\tEND=218723",
        "0\t23124\td\tC\tG\t50\tPASS\t.",
        "0\t250587\te\tG\tT\t50\tPASS\t.",
    ]) + "\n")
    gz = tmp_path / "x.vcf.gz"
    pysam.tabix_compress(str(text), str(gz), force=True)
    path = gz
    if kind == "bcf":
        path = tmp_path / "x.bcf"
        subprocess.run(["bcftools", "view", "--no-version", "-Ob", "-o", str(path), str(gz)],
                       check=True)
        gz.unlink()
    rechunk(path, seed=3, smallest=30, largest=60)  # every record across blocks
    subprocess.run(["bcftools", "index", "--min-shift", "9", str(path)], check=True)
    fmt = Format.BCF if kind == "bcf" else Format.VCF
    case = Case(tmp_path, path.name, fmt)
    _assert_between_chunks_exact(case, tmp_path)


def test_reads_between_chunks_are_not_vouched_for(tmp_path: Path) -> None:
    """The same shape in a BAM: short reads right of `[0, 1)`, then a spliced read whose
    span puts it in a high bin (the region's only chunk), every record across blocks."""
    from test_exact import rechunk

    header = {"HD": {"VN": "1.6", "SO": "coordinate"}, "SQ": [{"SN": "0", "LN": 300_000}]}
    path = tmp_path / "x.bam"
    with pysam.AlignmentFile(str(path), "wb", header=header) as out:
        for name, pos, cigar in [("a", 8865, "20M"), ("b", 14044, "2M"),
                                 ("c", 22931, "10M195772N10M"), ("d", 23123, "30M"),
                                 ("e", 250586, "5M")]:
            a = pysam.AlignedSegment(out.header)
            a.query_name, a.reference_id, a.reference_start, a.cigarstring = name, 0, pos, cigar
            n = a.infer_query_length()
            a.query_sequence, a.query_qualities = "A" * n, pysam.qualitystring_to_array("I" * n)
            a.mapping_quality = 60
            out.write(a)
    rechunk(path, seed=4, smallest=30, largest=60)
    pysam.index("-c", "-m", "9", str(path))
    case = Case(tmp_path, "x.bam", Format.BAM)
    _assert_between_chunks_exact(case, tmp_path)
