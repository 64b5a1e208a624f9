"""htsgetr._records (C) against its plain-Python twin, on real BAM, BCF and VCF record streams."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import records_twin as twin
from conftest import make_bam, make_vcf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from htsgetr import _records
from htsgetr.formats.bam import bam_header_length
from htsgetr.formats.bgzf import gunzip
from htsgetr.formats.vcf import bcf_header_length, vcf_header_length

STREAMS: dict[str, tuple[bytes, list[int], list, object, int]] = {}


def _starts(body: bytes, parse) -> list[int]:
    starts, pos = [], 0
    while pos < len(body):
        starts.append(pos)
        pos = parse(body, pos)[0]
    return starts + [len(body)]


@pytest.fixture(scope="module", autouse=True)
def streams(tmp_path_factory: pytest.TempPathFactory) -> None:
    d = tmp_path_factory.mktemp("records")
    bam = gunzip(make_bam(d / "r.bam", seed=5, n_reads=600).read_bytes())
    body = bam[bam_header_length(bam):]
    STREAMS["BAM"] = (body, _starts(body, twin.parse_bam), [0, 1, 2, 3, -1], twin.parse_bam,
                      _records.BAM)
    vcf_path = make_vcf(d / "r.vcf.gz", n=600)
    text = gunzip(vcf_path.read_bytes())
    body = text[vcf_header_length(text):]
    # add lines the parser must pass over or read specially
    body += (b"X\t150000\tsv\tN\t<DEL>\t.\tPASS\tSVTYPE=DEL;END=150900\n"
             b"X\tnotanumber\t.\tA\tG\t.\t.\t.\n" + b"X\t150950\t.\tACGT\tA\t.\t.\tEND=x\n")
    STREAMS["VCF"] = (body, _starts(body, twin.parse_vcf_exact), [b"1", b"2", b"X", b"empty"],
                      twin.parse_vcf_exact, _records.VCF)
    bcf = d / "r.bcf"
    subprocess.run(["bcftools", "view", "-Ob", "-o", str(bcf), str(vcf_path)], check=True)
    raw = gunzip(bcf.read_bytes())
    body = raw[bcf_header_length(raw):]
    STREAMS["BCF"] = (body, _starts(body, twin.parse_bcf_exact), [0, 1, 2, 3],
                      twin.parse_bcf_exact, _records.BCF)


def test_overlap_rules() -> None:
    """The VCF record with INFO/END spans to END; a bad END keeps the REF span."""
    body = STREAMS["VCF"][0]
    sv = body.index(b"X\t150000\tsv")
    nxt = body.index(b"\n", sv) + 1
    out = _records.runs(body, sv, -1, _records.VCF, -1, b"X", 150_800, 150_801, False)
    assert out[2][:1] == [(sv, nxt)]  # the <DEL> ending at 150900 overlaps
    bad = body.index(b"X\t150950")
    out = _records.runs(body, bad, -1, _records.VCF, -1, b"X", 150_953, 150_960, False)
    assert out[2] == []  # REF span [150949, 150953) does not reach 150953
    out = _records.runs(body, bad, -1, _records.VCF, -1, b"X", 150_952, 150_960, False)
    assert out[2] == [(bad, len(body))]
    assert _records.runs(b"", 0, -1, _records.BAM, 0, b"", 0, 10, False)[0] == \
        _records.NEED_MORE
    # the line whose POS tabix cannot read is walked over, and counted
    odd = body.index(b"X\tnotanumber")
    assert _records.runs(body, odd, -1, _records.VCF, -1, b"X", 0, 1, False)[3] == 1


def test_outcomes(tmp_path: Path) -> None:
    body, starts, _, _, ckind = STREAMS["BAM"]
    assert _records.runs(body, 0, 0, ckind, 0, b"", 0, 10, False)[0] == _records.LIMIT
    assert _records.runs(body[:10], 0, -1, ckind, 0, b"", 0, 10, False)[0] == _records.NEED_MORE
    outcome, pos, _, odd, _ = _records.runs(body, 0, -1, ckind, 0, b"", 0, 1, False)
    assert outcome == _records.PAST and pos in starts and odd == 0


@pytest.mark.parametrize("kind", ["BAM", "VCFX", "BCFX"])
def test_reach_is_the_furthest_end_walked_past(kind: str) -> None:
    """`reach`: the largest end of the records the walk stepped past, not of the one it
    stopped at (formats/waypoints.py relies on it for every record before `pos`)."""
    body, starts, refs, parse, ckind = STREAMS[kind]
    recs = [parse(body, p) for p in starts[:-1]]
    ref = next(r[1] for r in recs if r[1] is not None)
    ref_id = ref if isinstance(ref, int) else -1
    ref_name = ref if isinstance(ref, bytes) else b""
    n = next(i for i, r in enumerate(recs) if r[1] != ref and r[1] is not None) \
        if any(r[1] != ref and r[1] is not None for r in recs) else len(recs)
    ends = [r[3] for r in recs[:n] if r[1] == ref]
    for k in (1, 5, n // 2, n):
        limit = starts[k]
        outcome, pos, _, _, reach = _records.runs(body, 0, limit, ckind, ref_id, ref_name,
                                                   0, 1 << 40, False)
        assert (outcome, pos) == (_records.LIMIT, limit)
        assert reach == max((r[3] for r in recs[:k] if r[1] == ref), default=-1)
    assert max(ends) > 0


def test_placed_unmapped_read_covers_one_base() -> None:
    """htslib gives a placed unmapped read (or one without CIGAR) a one-base span."""
    import struct

    body, starts, _, parse, ckind = STREAMS["BAM"]
    unmapped = [p for p in starts[:-1]
                if struct.unpack_from("<H", body, p + 18)[0] & 4
                and struct.unpack_from("<i", body, p + 4)[0] >= 0]
    assert unmapped
    for p in unmapped[:20]:
        nxt, ref, beg, end = parse(body, p)
        assert end == beg + 1
        out = _records.runs(body, p, nxt, ckind, ref, b"", beg, beg + 1, False)
        assert out[2] == [(p, nxt)]
        assert _records.runs(body, p, nxt, ckind, ref, b"", beg + 1, beg + 2, False)[2] == []


# --------------------------------------------------------------------------- exact runs

#: VCF lines whose span only tabix's own rules decide: (line, (beg, end)) or None when
#: tabix does not read the line as a record (htslib 1.24 tbx_parse1)
TABIX_LINES: list[tuple[bytes, object]] = [
    (b"X\t100\ta\tACGT\tA\t.\t.\tEND=.", (99, 103)),
    (b"X\t100\tb\tA\t<DEL>\t.\t.\tSVLEN=-500;END=200", (99, 599)),
    (b"X\t100\tc\tA\t<DEL>\t.\t.\tEND=0x100", (99, 256)),
    (b"X\t100\td\tA\tG\t.\t.\tEND=050", (99, 100)),  # octal 40 <= POS: ignored
    (b"X\t0100\te\tA\tG\t.\t.\t.", (63, 64)),  # POS is read with base 0 too
    (b"X\t100\tf\tA\t<DUP>,<DEL>\t.\t.\tSVLEN=5,-3000", (99, 3099)),
    (b"X\t100\tg\tA\tC,<DEL>\t.\t.\tSVLEN=5000,-30", (99, 129)),
    (b"X\t100\th\tA\t<INS>\t.\t.\tSVLEN=5000", (99, 100)),
    (b"X\t100\ti\tA\t<*>\t.\t.\t.\tGT:LEN\t0/0:300\t0/0:700", (99, 799)),
    (b"X\t100\tj\tA\t<*>\t.\t.\t.\tGT\t0/0\t0/0", (99, 100)),
    (b"X\t100\tk\tA\t<NON_REF>\t.\t.\tEND=150\tGT:LEN\t0/0:10\t0/0:60", (99, 159)),
    (b"X\t100\tl\tA\tG\t.\t.\tXEND=500", (99, 100)),
    (b"X\t100\tm\tA\tG\t.\t.\tSVEND=7;END=400", (99, 400)),
    (b"X\t100\tn\tACGT\tA\t.\t.\t.\r", (99, 103)),
    (b"X\t100\to\tA\t<DEL:ME>\t.\t.\tSVLEN=-77", (99, 176)),
    (b"X\t100\tp\tA\t<DEL\t.\t.\tSVLEN=-77", (99, 100)),
    (b"X\t 100\tq\tA\tG", (99, 100)),
    (b"X\t-5\tr\tA\tG\t.\t.\t.", (0, 1)),
    (b"X\t100\ts\t\tG\t.\t.\t.", (99, 99)),  # no REF: a zero-length record
    (b"X\t100\tt\tA\tG\t.\t.\tEND=90", (99, 100)),
    (b"X\tabc\tu\tA\tG\t.\t.\t.", None),
    (b"#a comment", None),
    (b"", None),
    (b"X", None),
]


@pytest.fixture(scope="module", autouse=True)
def exact_streams(streams: None) -> None:
    """The same BAM and BCF bodies, and the VCF body with the tabix corner cases added."""
    body = STREAMS["VCF"][0] + b"".join(line + b"\n" for line, _ in TABIX_LINES)
    body += b"X\t151000\tlast\tA\t<DEL>\t.\t.\tSVLEN=-3;END=151010\n"
    STREAMS["VCFX"] = (body, _starts(body, twin.parse_vcf_exact), [b"1", b"2", b"X", b"empty"],
                       twin.parse_vcf_exact, _records.VCF)
    body = STREAMS["BCF"][0]
    STREAMS["BCFX"] = (body, _starts(body, twin.parse_bcf_exact), [0, 1, 2, 3],
                       twin.parse_bcf_exact, _records.BCF)


@pytest.mark.parametrize("line,span", TABIX_LINES)
def test_tabix_spans(line: bytes, span: object) -> None:
    """The twin measures each corner case as htslib's tbx_parse1 does, and so does C."""
    got = twin.vcf_span(line)
    assert (None if got is None else got[1:]) == span
    if span is None:
        out = _records.runs(line + b"\n", 0, -1, _records.VCF, -1, b"X", 0, 1 << 40, False)
        assert out == (_records.NEED_MORE, len(line) + 1, [], 1, -1)
        return
    assert isinstance(span, tuple)
    beg, end = span
    buf = line + b"\n"
    for lo, hi in [(end - 1, end), (end, end + 1), (beg - 1, beg), (beg, beg + 1), (beg, end)]:
        if lo < 0 or hi <= lo:
            continue
        _, _, runs, _, reach = _records.runs(buf, 0, -1, _records.VCF, -1, b"X", lo, hi,
                                             False)
        overlaps = end > lo and beg < hi
        assert reach == (end if hi > beg else -1)  # walked past unless it starts past hi
        assert runs == ([(0, len(buf))] if overlaps else []), (lo, hi)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["BAM", "VCFX", "BCFX"]), data=st.data())
def test_runs_match_twin(kind: str, data: st.DataObject) -> None:
    """`_records.runs` against the plain-Python twin, at record edges, with buffers cut
    inside records and limits at record starts."""
    body, starts, refs, parse, ckind = STREAMS[kind]
    n = len(starts) - 1
    i = data.draw(st.one_of(st.integers(0, n), st.integers(max(0, n - 40), n)))
    pos = starts[i]
    cut = data.draw(st.one_of(st.just(len(body)), st.integers(pos, len(body))))
    buf = body[:cut]
    limit = data.draw(st.one_of(st.just(-1), st.sampled_from(starts[i:])))
    j = data.draw(st.integers(max(0, i - 3), min(n - 1, i + 40)))
    _, rec_ref, rec_beg, rec_end = parse(body, starts[j])
    if rec_ref is None:  # a line tabix skips: aim at the reference of a neighbour
        rec_ref, rec_beg, rec_end = refs[2], 100, 101
    ref = data.draw(st.one_of(st.just(rec_ref), st.sampled_from(refs)))
    edge = data.draw(st.sampled_from([rec_beg, rec_end, rec_beg + 1, rec_end - 1]))
    beg = max(0, data.draw(st.one_of(st.integers(0, 320_000), st.integers(edge - 2, edge + 2))))
    end = data.draw(st.one_of(st.integers(beg, beg + 3), st.integers(beg, 330_000),
                              st.just((1 << 31) - 1)))
    open_end = data.draw(st.booleans())
    ref_id = ref if isinstance(ref, int) else -1
    ref_name = ref if isinstance(ref, bytes) else b""
    got = _records.runs(buf, pos, limit, ckind, ref_id, ref_name, beg, end, open_end)
    want = twin.runs(buf, pos, limit, parse, ref, beg, end, open_end)
    assert got == want


@given(kind=st.sampled_from(["BAM", "VCFX", "BCFX"]), data=st.data())
def test_record_end_is_where_runs_asks_for_more(kind: str, data: st.DataObject) -> None:
    """`_records.record_end` (a walk skips `runs` while a record runs on, exact.py) is -1
    exactly where `runs` stops at `pos` asking for more, else the record's own end; a VCF
    line searched from any point before its newline ends there too."""
    body, starts, _, parse, ckind = STREAMS[kind]
    i = data.draw(st.integers(0, len(starts) - 2))
    pos = starts[i]
    cut = data.draw(st.one_of(st.integers(pos, min(len(body), starts[i + 1] + 2)),
                              st.integers(pos, len(body))))
    buf = body[:cut]
    outcome, stopped, _, _, _ = _records.runs(buf, pos, -1, ckind, -1, b"\x00", 0, 1, False)
    need_more = outcome == _records.NEED_MORE and stopped == pos
    end = starts[i + 1]
    scanned = data.draw(st.integers(pos, max(pos, min(cut, end - 1))))
    assert _records.record_end(buf, pos, ckind, scanned) == (-1 if need_more else end)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["BAM", "VCFX", "BCFX"]), data=st.data())
def test_head_matches_twin(kind: str, data: st.DataObject) -> None:
    """`_records.head` (the record heads a skip probes) against the twin, on buffers cut
    anywhere inside the record, and against the record's own parse."""
    body, starts, refs, parse, ckind = STREAMS[kind]
    i = data.draw(st.integers(0, len(starts) - 2))
    pos = starts[i]
    cut = data.draw(st.one_of(st.just(len(body)), st.integers(pos, min(len(body), pos + 60))))
    ref = data.draw(st.sampled_from(refs))
    ref_id = ref if isinstance(ref, int) else -1
    ref_name = ref if isinstance(ref, bytes) else b""
    got = _records.head(body[:cut], pos, ckind, ref_id, ref_name)
    assert got == twin.head(body[:cut], pos, parse, ref)
    whole = _records.head(body, pos, ckind, ref_id, ref_name)
    _, rec_ref, rec_beg, _ = parse(body, pos)
    if rec_ref is None:
        assert whole[0] == 0
    else:
        assert whole == (int(rec_ref == ref), rec_beg)


def test_head_corner_cases() -> None:
    for line, want in [(b"X\t100\n", (1, 99)), (b"X\t100\r\n", (1, 99)), (b"X\t0x10\t", (1, 15)),
                       (b"Y\t100\t", (0, 99)), (b"#X\t100\t", (0, 0)), (b"X\tabc\t", (0, 0)),
                       (b"X\n", (0, 0)), (b"X\t10", (-1, 0)), (b"X", (-1, 0)), (b"", (-1, 0)),
                       (b"X\t-4\t", (1, 0))]:
        assert _records.head(line, 0, _records.VCF, -1, b"X") == want, line
        assert twin.head(line, 0, twin.parse_vcf_exact, b"X") == want, line


def test_tabix_spans_against_htslib(tmp_path: Path) -> None:
    """The corner cases as htslib itself decides them: each line on its own contig, indexed
    by pysam's tabix and fetched just inside and just outside both ends."""
    import pysam

    rows = [(line, span) for line, span in TABIX_LINES if isinstance(span, tuple)]
    header = ["##fileformat=VCFv4.5"]
    header += [f"##contig=<ID=c{i},length=100000>" for i in range(len(rows))]
    header += [f'##INFO=<ID={k},Number={n},Type=Integer,Description="x">'
               for k, n in [("END", "1"), ("SVLEN", "A"), ("XEND", "1"), ("SVEND", "1")]]
    header += ['##FORMAT=<ID=GT,Number=1,Type=String,Description="x">',
               '##FORMAT=<ID=LEN,Number=1,Type=Integer,Description="x">',
               "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ts1\ts2"]
    lines = [line.replace(b"X", f"c{i}".encode(), 1).decode() for i, (line, _) in enumerate(rows)]
    (tmp_path / "t.vcf").write_text("\n".join(header + lines) + "\n")
    pysam.tabix_index(str(tmp_path / "t.vcf"), preset="vcf")
    checked = 0
    with pysam.VariantFile(str(tmp_path / "t.vcf.gz")) as f:
        for i, (_, (beg, end)) in enumerate(rows):
            windows = [(end - 1, end), (end, end + 1), (beg - 1, beg), (beg, beg + 1)]
            try:
                counts = [len(list(f.fetch(f"c{i}", lo, hi))) if 0 <= lo < hi else None
                          for lo, hi in windows]
            except (ValueError, OSError):
                continue  # tabix returned the line but pysam cannot parse it (POS " 100")
            want = [int(end > lo and beg < hi) if 0 <= lo < hi else None for lo, hi in windows]
            assert counts == want, rows[i]
            checked += 1
    assert checked >= len(rows) - 2
