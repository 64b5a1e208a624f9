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
    STREAMS["VCF"] = (body, _starts(body, twin.parse_vcf), [b"1", b"2", b"X", b"empty"],
                      twin.parse_vcf, _records.VCF)
    bcf = d / "r.bcf"
    subprocess.run(["bcftools", "view", "-Ob", "-o", str(bcf), str(vcf_path)], check=True)
    raw = gunzip(bcf.read_bytes())
    body = raw[bcf_header_length(raw):]
    STREAMS["BCF"] = (body, _starts(body, twin.parse_bcf), [0, 1, 2, 3], twin.parse_bcf,
                      _records.BCF)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["BAM", "VCF", "BCF"]), data=st.data())
def test_scan_matches_twin(kind: str, data: st.DataObject) -> None:
    body, starts, refs, parse, ckind = STREAMS[kind]
    n = len(starts) - 1
    i = data.draw(st.one_of(st.integers(0, n), st.integers(max(0, n - 6), n)))
    pos = starts[i]
    cut = data.draw(st.one_of(st.just(len(body)), st.integers(pos, len(body))))
    buf = body[:cut]  # the buffer may end inside a record
    limit = data.draw(st.one_of(st.just(-1), st.sampled_from(starts[i:])))
    # regions placed at record edges, where overlap rules (END=, CIGAR, unmapped) decide
    j = data.draw(st.integers(max(0, i - 3), min(n - 1, i + 40)))
    _, rec_ref, rec_beg, rec_end = parse(body, starts[j])
    ref = data.draw(st.one_of(st.just(rec_ref), st.sampled_from(refs)))
    edge = data.draw(st.sampled_from([rec_beg, rec_end, rec_beg + 1, rec_end - 1]))
    beg = max(0, data.draw(st.one_of(st.integers(0, 320_000), st.integers(edge - 2, edge + 2))))
    end = data.draw(st.one_of(st.integers(beg, beg + 3), st.integers(beg, 330_000)))
    open_end = data.draw(st.booleans())
    ref_id = ref if isinstance(ref, int) else -1
    ref_name = ref if isinstance(ref, bytes) else b""
    got = _records.scan(buf, pos, limit, ckind, ref_id, ref_name, beg, end, open_end)
    want = twin.scan(buf, pos, limit, parse, ref, beg, end, open_end)
    assert got == want


def test_overlap_rules() -> None:
    """The VCF record with INFO/END spans to END; a bad END keeps the REF span."""
    body = STREAMS["VCF"][0]
    sv = body.index(b"X\t150000\tsv")
    out = _records.scan(body, sv, -1, _records.VCF, -1, b"X", 150_800, 150_801, False)
    assert out[2] == sv  # first overlapping record is the <DEL> ending at 150900
    bad = body.index(b"X\t150950")
    out = _records.scan(body, bad, -1, _records.VCF, -1, b"X", 150_953, 150_960, False)
    assert out[2] == -1  # REF span [150949, 150953) does not reach 150953
    out = _records.scan(body, bad, -1, _records.VCF, -1, b"X", 150_952, 150_960, False)
    assert out[2] == bad
    assert _records.scan(b"", 0, -1, _records.BAM, 0, b"", 0, 10, False)[0] == _records.NEED_MORE


def test_outcomes(tmp_path: Path) -> None:
    body, starts, _, _, ckind = STREAMS["BAM"]
    assert _records.scan(body, 0, 0, ckind, 0, b"", 0, 10, False)[0] == _records.LIMIT
    assert _records.scan(body[:10], 0, -1, ckind, 0, b"", 0, 10, False)[0] == _records.NEED_MORE
    outcome, pos, first, last = _records.scan(body, 0, -1, ckind, 0, b"", 0, 1, False)
    assert outcome == _records.PAST and pos in starts


def test_placed_unmapped_read_covers_one_base() -> None:
    """htslib gives a placed unmapped read (or one without CIGAR) a one-base span."""
    import struct

    body, starts, _, parse, ckind = STREAMS["BAM"]
    unmapped = [p for p in starts[:-1]
                if struct.unpack_from("<H", body, p + 18)[0] & 4
                and struct.unpack_from("<i", body, p + 4)[0] >= 0]
    assert unmapped
    for p in unmapped[:20]:
        _, ref, beg, end = parse(body, p)
        assert end == beg + 1
        out = _records.scan(body, p, -1, ckind, ref, b"", beg, beg + 1, False)
        assert out[2] == p
