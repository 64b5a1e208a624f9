"""Record-exact CRAM tickets: the reassembled stream holds exactly the records htslib's
region queries return, each once, in file order — for every region query, and under
authorization rules (`Query.exact`), which differ only where a container cannot be decoded.

Generated CRAMs (3.0, 3.1, 2.1; reference-based, embedded reference, no reference; small
containers, several slices per container, multi-reference slices) from generated BAMs with
varied CIGARs, placed unmapped reads, mates, MD/NM and typed tags; plus the htsnexus CRAM
where ../shared/data is present. Every check compares the WHOLE ordered list of records with
pysam's `fetch` on the original, so an extra record fails as surely as a missing one.

Reference-based CRAMs: the server looks a reference up only in the configured
`cram_reference_path` directories (the FASTA the @SQ UR names there, or M5-named sequences;
never EBI, the environment's REF_PATH/REF_CACHE, or a UR path outside them — which exists
here). With the reference found, they are exact like the others. Without it, htslib cannot
decode such a container: a boundary container is sent whole for an ordinary query (wider,
still valid), and a restricted query that needs one is refused with 403 PermissionDenied;
regions that need only whole containers are served either way.
"""

from __future__ import annotations

import array
import base64
import collections
import dataclasses
import gzip
import hashlib
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional
from urllib.parse import unquote, urlparse

import pysam
import pytest
from conftest import make_bam, shared

from htsgetr.config import Config, LocationConfig, for_data_dir
from htsgetr.engine import Htsget
from htsgetr.formats import cram_encoder, cram_recode
from htsgetr.formats.cram import CramHandler
from htsgetr.formats.cram_layout import (
    EOF_CONTAINER_V2,
    EOF_CONTAINER_V3,
    parse_container_header,
    parse_header,
    read_itf8,
)
from htsgetr.formats.cram_recode import Selection, endpos
from htsgetr.formats.cram_reference import coding_header
from htsgetr.protocol import Endpoint, Format, NotFound, PermissionDenied, Query, Region

pytestmark = pytest.mark.skipif(shutil.which("samtools") is None, reason="samtools not installed")

REFS = [("chr1", 60_000), ("chr2", 30_000), ("chrEmpty", 5_000), ("chr3", 20_000)]
#: name -> (samtools view options, needs the reference to decode)
VARIANTS: dict[str, tuple[list[str], bool]] = {
    "ref30": (["-T", "{ref}", "--output-fmt-option", "version=3.0",
               "--output-fmt-option", "seqs_per_slice=150"], True),
    "ref31": (["-T", "{ref}", "--output-fmt-option", "version=3.1",
               "--output-fmt-option", "seqs_per_slice=150"], True),
    "emb30": (["-T", "{ref}", "--output-fmt-option", "version=3.0",
               "--output-fmt-option", "embed_ref=1",
               "--output-fmt-option", "seqs_per_slice=150"], False),
    "emb31": (["-T", "{ref}", "--output-fmt-option", "version=3.1",
               "--output-fmt-option", "embed_ref=1",
               "--output-fmt-option", "seqs_per_slice=150"], False),
    "nor30": (["--output-fmt-option", "version=3.0", "--output-fmt-option", "no_ref=1",
               "--output-fmt-option", "seqs_per_slice=150"], False),
    "nor31": (["--output-fmt-option", "version=3.1", "--output-fmt-option", "no_ref=1",
               "--output-fmt-option", "seqs_per_slice=150"], False),
    # multi-reference slices, one mixing the last placed reads with unplaced ones
    "multi": (["--output-fmt-option", "version=3.1", "--output-fmt-option", "no_ref=1",
               "--output-fmt-option", "seqs_per_slice=170",
               "--output-fmt-option", "multi_seq_per_slice=1"], False),
    # several slices per container
    "slices": (["-T", "{ref}", "--output-fmt-option", "version=3.0",
                "--output-fmt-option", "embed_ref=1", "--output-fmt-option", "seqs_per_slice=60",
                "--output-fmt-option", "slices_per_container=3"], False),
    "v21": (["--output-fmt-option", "version=2.1", "--output-fmt-option", "no_ref=1",
             "--output-fmt-option", "seqs_per_slice=150"], False),
}
DECODABLE = [n for n, (_, needs_ref) in VARIANTS.items() if not needs_ref] + ["mk"]
HTSNEXUS = "htsnexus_test_NA12878"


def samtools(*args: str) -> str:
    out = subprocess.run(["samtools", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


# --------------------------------------------------------------------------- data


def _read(rng: random.Random, ref: str, pos: int, qlen: int) -> tuple[str, str, Optional[str], int]:
    """A read at `pos` of `ref` with a random CIGAR shape: (cigar, seq, MD or None, NM)."""
    kind = rng.random()
    a = qlen // 2
    if kind < 0.5:
        ops = [("M", qlen)]
    elif kind < 0.6:
        s = rng.randint(1, 20)
        ops = [("S", s), ("M", qlen - s)]
    elif kind < 0.68:
        s = rng.randint(1, 20)
        ops = [("M", qlen - s), ("S", s)]
    elif kind < 0.78:
        ops = [("M", a), ("D", rng.randint(1, 30)), ("M", qlen - a)]
    elif kind < 0.86:
        ops = [("M", a), ("I", 5), ("M", qlen - a - 5)]
    elif kind < 0.92:
        ops = [("M", a), ("N", rng.randint(1, 800)), ("M", qlen - a)]
    elif kind < 0.96:
        ops = [("S", qlen)]  # no reference bases: htslib's end is pos + 1
    else:
        ops = [("M", 10), ("D", 5), ("M", qlen - 10)]
    seq, md, matches, nm, r = [], [], 0, 0, pos
    for op, n in ops:
        if op == "M":
            for i in range(n):
                base = ref[r + i]
                if rng.random() < 0.02:
                    alt = rng.choice([b for b in "ACGT" if b != base])
                    seq.append(alt)
                    md.append(f"{matches}{base}")
                    matches, nm = 0, nm + 1
                else:
                    seq.append(base)
                    matches += 1
            r += n
        elif op in "IS":
            seq.extend(rng.choice("ACGT") for _ in range(n))
            nm += n if op == "I" else 0
        elif op == "D":
            md.append(f"{matches}^{ref[r:r + n]}")
            matches, nm, r = 0, nm + n, r + n
        else:  # N
            r += n
    md.append(str(matches))
    cigar = "".join(f"{n}{op}" for op, n in ops)
    has_n = any(op == "N" for op, _ in ops)
    return cigar, "".join(seq), None if has_n else "".join(md), nm


def make_exact_bam(path: Path, ref_fa: Path, seed: int = 8, n_reads: int = 2200) -> Path:
    """A sorted, indexed BAM matching `ref_fa` (written here too): varied CIGARs, placed
    unmapped reads, mate pairs, MD/NM (which reference-based CRAM drops and regenerates),
    typed tags, reads without qualities, then unplaced unmapped reads."""
    rng = random.Random(seed)
    seqs = {n: "".join(rng.choice("ACGT") for _ in range(ln)) for n, ln in REFS}
    with open(ref_fa, "w") as f:
        for name, seq in seqs.items():
            f.write(f">{name}\n")
            f.writelines(seq[i : i + 60] + "\n" for i in range(0, len(seq), 60))
    pysam.faidx(str(ref_fa))
    header = {
        "HD": {"VN": "1.6", "SO": "coordinate"},
        "SQ": [{"SN": n, "LN": ln} for n, ln in REFS],
        "RG": [{"ID": "rgA", "SM": "s1"}, {"ID": "rgB", "SM": "s2"}],
    }
    placed = [0, 0, 1, 3]  # chrEmpty stays empty
    reads: list[dict[str, Any]] = []
    i = 0
    while i < n_reads:
        tid = rng.choice(placed)
        name, length = REFS[tid]
        qlen = rng.choice([30, 75, 100, 151])
        pos = rng.randint(0, length - 1500)
        if rng.random() < 0.05:  # placed unmapped: a position, flag 4, no CIGAR
            reads.append({"tid": tid, "pos": pos, "qlen": qlen, "name": f"pu{i}", "flag": 4})
            i += 1
            continue
        cigar, seq, md, nm = _read(rng, seqs[name], pos, qlen)
        read = {"tid": tid, "pos": pos, "name": f"r{i}", "flag": rng.choice([0, 16]),
                "cigar": cigar, "seq": seq, "md": md, "nm": nm}
        reads.append(read)
        i += 1
        if rng.random() < 0.25:  # a mate downstream, often in the same container
            mpos = pos + rng.randint(50, 400)
            mcigar, mseq, mmd, mnm = _read(rng, seqs[name], mpos, qlen)
            mate = {"tid": tid, "pos": mpos, "name": f"r{i - 1}", "flag": 147,
                    "cigar": mcigar, "seq": mseq, "md": mmd, "nm": mnm}
            read["flag"] = 99
            reads.append(mate)
            read["mate"], mate["mate"] = mate, read
            i += 1
    reads.sort(key=lambda r: (r["tid"], r["pos"]))
    unsorted = path.with_suffix(".unsorted.bam")
    with pysam.AlignmentFile(str(unsorted), "wb", header=header) as out:
        for r in reads:
            a = pysam.AlignedSegment(out.header)
            a.query_name = r["name"]
            a.reference_id, a.reference_start, a.flag = r["tid"], r["pos"], r["flag"]
            if r["flag"] & 4:
                a.query_sequence = "".join(rng.choice("ACGT") for _ in range(r["qlen"]))
            else:
                a.query_sequence = r["seq"]
                a.cigarstring = r["cigar"]
                a.mapping_quality = rng.randint(0, 60)
            qlen = len(a.query_sequence)
            if rng.random() < 0.97:
                a.query_qualities = pysam.qualitystring_to_array(
                    "".join(rng.choice("#+5?I") for _ in range(qlen)))
            if "mate" in r:
                m = r["mate"]
                a.next_reference_id, a.next_reference_start = m["tid"], m["pos"]
                first, second = (r, m) if r["flag"] & 64 else (m, r)
                span = second["pos"] + _ref_len(second["cigar"]) - first["pos"]
                a.template_length = span if r is first else -span
            a.set_tag("RG", rng.choice(["rgA", "rgB"]))
            if not r["flag"] & 4 and r["md"] is not None and rng.random() < 0.7:
                a.set_tag("NM", r["nm"])
                a.set_tag("MD", r["md"])
            if rng.random() < 0.2:
                a.set_tag("XC", rng.randint(0, 200), value_type="C")
                a.set_tag("XF", rng.random(), value_type="f")
                a.set_tag("XB", array.array("h", [rng.randint(-300, 300) for _ in range(3)]))
            out.write(a)
        for j in range(150):
            a = pysam.AlignedSegment(out.header)
            a.query_name = f"unplaced{j}"
            a.query_sequence = "".join(rng.choice("ACGTN") for _ in range(40))
            a.query_qualities = pysam.qualitystring_to_array("I" * 40)
            a.flag, a.reference_id, a.reference_start = 4, -1, -1
            out.write(a)
    pysam.sort("-o", str(path), str(unsorted))
    unsorted.unlink()
    pysam.index(str(path))
    return path


def _ref_len(cigar: str) -> int:
    total, num = 0, ""
    for ch in cigar:
        if ch.isdigit():
            num += ch
        else:
            total += int(num) if ch in "MDN=X" else 0
            num = ""
    return total


@pytest.fixture(scope="module")
def exact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cram_exact")
    ref = d / "ref.fa"
    bam = make_exact_bam(d / "source.bam", ref)
    for name, (options, _) in VARIANTS.items():
        opts = [o.replace("{ref}", str(ref)) for o in options]
        samtools("view", "-C", *opts, "-o", str(d / f"{name}.cram"), str(bam))
        samtools("index", str(d / f"{name}.cram"))
    # the shared fixture BAM (random sequences), no reference
    make_bam(d / "mk.bam", seed=11)
    samtools("view", "-C", "--output-fmt-option", "no_ref=1", "--output-fmt-option",
             "seqs_per_slice=200", "-o", str(d / "mk.cram"), str(d / "mk.bam"))
    samtools("index", str(d / "mk.cram"))
    return d


@pytest.fixture(scope="module")
def engine(exact_dir: Path) -> Htsget:
    return Htsget(for_data_dir(str(exact_dir)))


# --------------------------------------------------------------------------- helpers


class Original:
    """One CRAM as htslib reads it: every record (as a comparable key) in file order, and
    the records of each region query."""

    def __init__(self, path: Path, reference: Optional[Path]) -> None:
        self.path = path
        self.reference = str(reference) if reference else None
        self.file = pysam.AlignmentFile(str(path), "rc", reference_filename=self.reference)
        self.keys = [key(r) for r in self.records()]
        self.unplaced = {key(r) for r in self.records() if r.reference_id == -1}
        self.lengths = dict(zip(self.file.references, self.file.lengths))

    def records(self) -> list[Any]:
        """Every record in file order (a file of its own: `until_eof` reads on from where
        the last read stopped)."""
        with pysam.AlignmentFile(str(self.path), "rc", reference_filename=self.reference) as f:
            return list(f.fetch(until_eof=True))

    def region(self, region: Region) -> set[str]:
        if region.reference_name == "*":
            return self.unplaced
        return {key(r) for r in self.file.fetch(region.reference_name, region.start, region.end)}

    def expected(self, regions: tuple[Region, ...]) -> list[str]:
        """The union of the region queries, each record once, in file order."""
        wanted: set[str] = set()
        for region in regions:
            wanted |= self.region(region)
        return [k for k in self.keys if k in wanted]

    def containers(self) -> list[tuple[int, int, list[Any]]]:
        """(offset, end, records) of each data container, records decoded in order."""
        data = self.path.read_bytes()
        version, head, _ = parse_header(data)
        eof = EOF_CONTAINER_V3 if version[0] >= 3 else EOF_CONTAINER_V2
        records = iter(self.records())
        out, pos = [], head.end
        while pos < len(data) - len(eof):
            c = parse_container_header(data, pos, version[0], pos)
            out.append((c.offset, c.end, [next(records) for _ in range(c.n_records)]))
            pos = c.end
        return out


def key(r: Any) -> str:
    """Everything of a record: SAM fields, tag values and their BAM types."""
    return r.to_string() + "\t|" + "".join(t for _, _, t in r.get_tags(with_value_type=True))


def crai_entries(path: Path) -> dict[int, list[tuple[int, int, int]]]:
    """Raw CRAI lines by container offset: (reference ID, 1-based start, span)."""
    out: dict[int, list[tuple[int, int, int]]] = collections.defaultdict(list)
    for line in gzip.decompress(Path(f"{path}.crai").read_bytes()).decode().splitlines():
        ref, start, span, offset, _, _ = (int(x) for x in line.split())
        out[offset].append((ref, start, span))
    return out


def query(id: str, regions: tuple[Region, ...], exact: bool = True) -> Query:
    return Query(Endpoint.READS, id, Format.CRAM, regions=regions, exact=exact)


def payload_of(engine: Htsget, q: Query, root: Path) -> tuple[bytes, list[dict]]:
    """Reassemble a ticket: data: urls decoded, byte ranges read from the file."""
    urls = engine.ticket(q).to_json()["htsget"]["urls"]
    parts = []
    for block in urls:
        url = block["url"]
        if url.startswith("data:"):
            assert url.startswith("data:;base64,")
            parts.append(base64.b64decode(url[len("data:;base64,") :]))
            continue
        key = unquote(urlparse(url).path.split("/data/", 1)[1])
        if "headers" not in block:  # a derived block: what /data computes
            parts.append(engine.derived(key))
            continue
        path = root / key
        first, last = (int(x) for x in block["headers"]["Range"].split("=")[1].split("-"))
        with open(path, "rb") as f:
            f.seek(first)
            parts.append(f.read(last - first + 1))
    return b"".join(parts), urls


def check(payload: bytes, urls: list[dict], original: Original, expected: list[str],
          tmp: Path) -> list[str]:
    """Header first, EOF container last and once, samtools reads it, and pysam finds
    exactly `expected`, in order."""
    data = original.path.read_bytes()
    version, head, _ = parse_header(data)
    eof = EOF_CONTAINER_V3 if version[0] >= 3 else EOF_CONTAINER_V2
    assert payload[: head.end] == data[: head.end], "the header must come first"
    assert urls[0]["class"] == "header" and all(u["class"] == "body" for u in urls[1:])
    assert payload.endswith(eof) and not payload[: -len(eof)].endswith(eof)
    out = tmp / "exact.cram"
    out.write_bytes(payload)
    with pysam.AlignmentFile(str(out), "rc", reference_filename=original.reference) as f:
        got = [key(r) for r in f.fetch(until_eof=True)]
    extra = collections.Counter(got) - collections.Counter(expected)
    missing = collections.Counter(expected) - collections.Counter(got)
    assert not extra, f"{sum(extra.values())} records outside the regions: {list(extra)[:2]}"
    assert not missing, f"{sum(missing.values())} region records missing: {list(missing)[:2]}"
    assert got == expected, "records out of file order"
    ref = ["-T", original.reference] if original.reference else []
    assert len(samtools("view", *ref, str(out)).splitlines()) == len(expected)
    return got


def random_regions(rng: random.Random, lengths: dict[str, int], busy: list[str],
                   ) -> tuple[Region, ...]:
    """1-3 regions: mostly on `busy` references, some whole references, `*`, empty ones."""
    out = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        roll = rng.random()
        name = rng.choice(busy if roll < 0.9 else list(lengths))
        if roll < 0.05:
            out.append(Region("*"))
        elif roll < 0.12:
            out.append(Region(name))
        else:
            start = rng.randint(0, lengths[name])
            end = start + rng.choice([1, 10, 300, 2_000, 8_000, 25_000])
            out.append(Region(name, start, end if rng.random() < 0.9 else None))
    return tuple(out)


@pytest.fixture(scope="module")
def originals(exact_dir: Path) -> dict[str, Original]:
    ref = exact_dir / "ref.fa"
    out = {n: Original(exact_dir / f"{n}.cram", ref if VARIANTS[n][1] else None)
           for n in VARIANTS}
    out["mk"] = Original(exact_dir / "mk.cram", None)
    return out


# --------------------------------------------------------------------------- the rule


@pytest.mark.parametrize("name", [*VARIANTS, "mk", HTSNEXUS])
def test_records_lie_inside_their_crai_spans(
    exact_dir: Path, originals: dict[str, Original], name: str
) -> None:
    """The premise of sending a container whole: every record of it (placed unmapped ones
    and those of multi-reference slices included) lies inside a CRAI entry of its own
    reference for that container, by htslib's own end (`bam_endpos`)."""
    original = _original(originals, name)
    entries = crai_entries(original.path)
    seen = collections.Counter[str]()
    for offset, _end, records in original.containers():
        spans = entries[offset]
        refs = {ref for ref, _, _ in spans}
        seen["multi-ref containers"] += len(refs) > 1
        seen["placed+unplaced containers"] += -1 in refs and len(refs) > 1
        for r in records:
            seen["placed unmapped"] += r.is_unmapped and r.reference_id >= 0
            if r.reference_id == -1:
                assert -1 in refs
                continue
            pos, end = r.reference_start, endpos(r)
            assert any(ref == r.reference_id and start - 1 <= pos and end <= start - 1 + span
                       for ref, start, span in spans), (name, offset, r.to_string()[:80])
    if name != HTSNEXUS:
        assert seen["placed unmapped"] > 50
    if name == "multi":
        assert seen["multi-ref containers"] >= 2 and seen["placed+unplaced containers"] == 1


@pytest.mark.parametrize("name", [*DECODABLE, HTSNEXUS])
def test_covered_containers_are_sent_whole_and_htslib_agrees(
    exact_dir: Path, engine: Htsget, originals: dict[str, Original], name: str,
    tmp_path: Path,
) -> None:
    """For each container, regions just covering its CRAI entries (as widened by the index
    parser, plus `*` for unplaced entries): the container is one byte range of the ticket,
    htslib's region queries return every one of its records, and the whole payload is
    exact (its neighbours are re-encoded)."""
    original = _original(originals, name)
    eng = engine if name != HTSNEXUS else Htsget(for_data_dir(str(original.path.parent)))
    names = list(original.file.references)
    entries = crai_entries(original.path)
    for offset, end, records in original.containers():
        regions = []
        for ref, start, span in entries[offset]:
            if ref == -1:
                regions.append(Region("*"))
            else:
                beg = max(0, start - 1)
                regions.append(Region(names[ref], max(0, beg - 1), beg + max(span, 1) + 1))
        regs = tuple(regions)
        expected = original.expected(regs)
        assert {key(r) for r in records} <= set(expected), "htslib disagrees with the rule"
        payload, urls = payload_of(eng, query(name, regs), original.path.parent)
        ranges = [tuple(int(x) for x in u["headers"]["Range"].split("=")[1].split("-"))
                  for u in urls[1:] if not u["url"].startswith("data:")]
        assert any(a <= offset and end - 1 <= b for a, b in ranges), "not sent whole"
        check(payload, urls, original, expected, tmp_path)


# --------------------------------------------------------------------------- regions


@pytest.mark.parametrize("name", DECODABLE)
def test_random_regions_exact(
    exact_dir: Path, engine: Htsget, originals: dict[str, Original], name: str,
    tmp_path: Path,
) -> None:
    original = originals[name]
    rng = random.Random(f"exact-{name}")
    busy = ["chr1", "chr2", "chr3"]
    inline = 0
    for _ in range(36):
        regions = random_regions(rng, original.lengths, busy)
        payload, urls = payload_of(engine, query(name, regions), exact_dir)
        inline += sum(1 for u in urls[1:-1] if u["url"].startswith("data:"))
        check(payload, urls, original, original.expected(regions), tmp_path)
    assert inline > 10  # boundary containers were re-encoded, not only whole ones sent


def test_random_regions_htsnexus(tmp_path: Path) -> None:
    path = shared("cram", f"{HTSNEXUS}.cram")
    engine = Htsget(for_data_dir(str(path.parent)))
    original = Original(path, None)
    rng = random.Random(12)
    spans = {"11": (4_999_000, 5_100_500), "20": (5_999_000, 6_101_000)}
    sizes = []
    for i in range(30):
        regions = []
        for _ in range(rng.choice([1, 1, 2, 3])):
            contig = rng.choice(["11", "20"])
            lo, hi = spans[contig]
            start = rng.randint(lo, hi)
            regions.append(Region(contig, start, start + rng.choice([1, 150, 5_000, 40_000])))
        if i % 7 == 0:
            regions.append(Region("*"))
        if i % 11 == 0:
            regions.append(Region("1", 0, 1_000_000))
        regs = tuple(regions)
        payload, urls = payload_of(engine, query(HTSNEXUS, regs), path.parent)
        sizes.append(len(check(payload, urls, original, original.expected(regs), tmp_path)))
    assert sum(1 for n in sizes if 0 < n < 10_000) > 15  # parts of 10,000-record containers
    # the 12,475 unplaced reads only (their containers are sent whole)
    payload, urls = payload_of(engine, query(HTSNEXUS, (Region("*"),)), path.parent)
    assert len(check(payload, urls, original, original.expected((Region("*"),)),
                     tmp_path)) == 12_475
    assert not any(u["url"].startswith("data:") for u in urls[1:-1])


@pytest.mark.parametrize("name", DECODABLE)
def test_unplaced_only(
    exact_dir: Path, engine: Htsget, originals: dict[str, Original], name: str,
    tmp_path: Path,
) -> None:
    original = originals[name]
    regions = (Region("*"),)
    payload, urls = payload_of(engine, query(name, regions), exact_dir)
    got = check(payload, urls, original, original.expected(regions), tmp_path)
    assert len(got) == (300 if name == "mk" else 150)
    assert all(line.split("\t")[2] == "*" for line in got)


@pytest.mark.parametrize("name", [*VARIANTS, "mk"])
def test_empty_regions_header_and_eof(
    exact_dir: Path, engine: Htsget, originals: dict[str, Original], name: str,
    tmp_path: Path,
) -> None:
    original = originals[name]
    payload, urls = payload_of(engine, query(name, ()), exact_dir)
    data = original.path.read_bytes()
    header_end = parse_header(data)[1].end
    eof = EOF_CONTAINER_V2 if name == "v21" else EOF_CONTAINER_V3
    assert payload == data[:header_end] + eof
    assert check(payload, urls, original, [], tmp_path) == []
    # a region on an empty reference: the same
    payload, urls = payload_of(engine, query(name, (Region("chrEmpty", 10, 20),)), exact_dir)
    assert payload == data[:header_end] + eof


def check_wider(payload: bytes, original: Original, expected: list[str], tmp: Path
                ) -> list[str]:
    """A valid CRAM (header first, one EOF container) holding every expected record and
    maybe neighbours of whole containers: each record once, in file order."""
    data = original.path.read_bytes()
    version, head, _ = parse_header(data)
    eof = EOF_CONTAINER_V3 if version[0] >= 3 else EOF_CONTAINER_V2
    assert payload[: head.end] == data[: head.end]
    assert payload.endswith(eof) and not payload[: -len(eof)].endswith(eof)
    with pysam.AlignmentFile(str(_write(tmp, payload)), "rc",
                             reference_filename=original.reference) as f:
        got = [key(r) for r in f.fetch(until_eof=True)]
    assert not collections.Counter(expected) - collections.Counter(got), "records missing"
    position = {k: i for i, k in enumerate(original.keys)}
    order = [position[k] for k in got]
    assert order == sorted(set(order)), "a record twice, or out of file order"
    return got


@pytest.mark.parametrize("name", ["ref30", "ref31"])
def test_reference_based_cram_without_its_reference(
    exact_dir: Path, engine: Htsget, originals: dict[str, Original], name: str,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """No reference directory configured (the file's UR names an existing path, never
    used): whole containers are served (the client decodes them with its reference); a
    boundary container cannot be decoded here, so an ordinary query gets it whole (wider,
    logged), and a restricted one is refused with 403, never sent whole."""
    original = originals[name]
    for regions in [(Region("chr1"),), (Region("chr2", 0, 1_000_000), Region("*")),
                    (Region("chr3"), Region("chr1"))]:
        for exact in (True, False):
            payload, urls = payload_of(engine, query(name, regions, exact), exact_dir)
            assert not any(u["url"].startswith("data:") for u in urls[1:-1])
            check(payload, urls, original, original.expected(regions), tmp_path)
    rng = random.Random(name)
    refused = wider = 0
    for _ in range(12):
        regions = random_regions(rng, original.lengths, ["chr1", "chr2", "chr3"])
        expected = original.expected(regions)
        payload, urls = payload_of(engine, query(name, regions, exact=False), exact_dir)
        assert not any(u["url"].startswith("data:") for u in urls[1:-1])
        wider += check_wider(payload, original, expected, tmp_path) != expected
        try:
            payload, urls = payload_of(engine, query(name, regions), exact_dir)
        except PermissionDenied as exc:
            assert exc.status == 403
            assert exc.message.startswith("this CRAM region cannot be restricted to the record: ")
            assert "reference" in exc.message
            refused += 1
            continue
        check(payload, urls, original, expected, tmp_path)
    assert refused >= 6 and wider >= 6
    with pytest.raises(PermissionDenied):
        engine.ticket(query(name, (Region("chr1", 20_000, 20_100),)))
    with caplog.at_level(logging.INFO, logger="htsgetr"):
        engine.ticket(query(name, (Region("chr1", 20_000, 20_100),), exact=False))
    assert any("sent whole" in r.getMessage() for r in caplog.records)


def reference_dirs(exact_dir: Path) -> dict[str, Path]:
    """Reference directories of each kind the server looks in: the directory the UR names
    (with ref.fa), another holding a copy of it under the same name, htslib's REF_CACHE
    layout of its sequences by M5, and one whose ref.fa has the same names but other bases."""
    out = {"ur-path": exact_dir, "ur-name": exact_dir / "refs-by-name",
           "m5": exact_dir / "refs-m5", "wrong": exact_dir / "refs-wrong"}
    if out["m5"].exists():
        return out
    out["ur-name"].mkdir()
    out["wrong"].mkdir()
    for suffix in ("", ".fai"):
        shutil.copy(exact_dir / f"ref.fa{suffix}", out["ur-name"] / f"ref.fa{suffix}")
    fasta = pysam.FastaFile(str(exact_dir / "ref.fa"))
    rng = random.Random(3)
    with open(out["wrong"] / "ref.fa", "w") as wrong:
        for name in fasta.references:
            seq = fasta.fetch(name).upper()
            m5 = hashlib.md5(seq.encode()).hexdigest()
            where = out["m5"] / m5[:2] / m5[2:4]
            where.mkdir(parents=True, exist_ok=True)
            (where / m5[4:]).write_text(seq)
            other = "".join(rng.choice("ACGT") for _ in seq)
            wrong.write(f">{name}\n{other}\n")
    pysam.faidx(str(out["wrong"] / "ref.fa"))
    return out


@pytest.mark.parametrize("how", ["ur-path", "ur-name", "m5"])
@pytest.mark.parametrize("name", ["ref30", "ref31"])
def test_reference_based_cram_with_its_reference(
    exact_dir: Path, originals: dict[str, Original], name: str, how: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the reference in a configured directory (as the UR names it, by the UR's file
    name, or by M5), boundary containers are decoded with it and re-encoded without one:
    exact, restricted or not, POST-like region sets and `*` included; the environment's
    REF_PATH / REF_CACHE are as they were afterwards."""
    monkeypatch.setenv("REF_PATH", "/nonexistent/%s")
    monkeypatch.delenv("REF_CACHE", raising=False)
    directory = reference_dirs(exact_dir)[how]
    engine = Htsget(Config(locations=[LocationConfig(root=str(exact_dir))],
                           cram_reference_path=[str(directory)]))
    original = originals[name]
    rng = random.Random(f"{name}-{how}")
    inline = 0
    for i in range(14):
        regions = random_regions(rng, original.lengths, ["chr1", "chr2", "chr3"])
        payload, urls = payload_of(engine, query(name, regions, exact=i % 2 == 0), exact_dir)
        inline += sum(1 for u in urls[1:-1] if u["url"].startswith("data:"))
        check(payload, urls, original, original.expected(regions), tmp_path)
    assert inline > 5
    assert os.environ["REF_PATH"] == "/nonexistent/%s" and "REF_CACHE" not in os.environ
    # the re-encoded containers need no reference: read behind a header naming none
    regions = (Region("chr1", 20_000, 20_100),)
    _, urls = payload_of(engine, query(name, regions), exact_dir)
    pieces = [base64.b64decode(u["url"][len("data:;base64,"):]) for u in urls[1:-1]]
    version, _, text = parse_header(original.path.read_bytes())
    head = cram_recode.file_head(version, coding_header(text))
    assert inline_only(head + b"".join(pieces) + EOF_CONTAINER_V3) == original.expected(regions)


def inline_only(payload: bytes) -> list[str]:
    """The records of a CRAM read with no reference at all."""
    with tempfile.NamedTemporaryFile(suffix=".cram") as f:
        f.write(payload)
        f.flush()
        with pysam.AlignmentFile(f.name, "rc") as reader:
            return [key(r) for r in reader.fetch(until_eof=True)]


def test_no_reference_is_looked_up_beyond_the_configured_directories(
    exact_dir: Path, originals: dict[str, Original], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reference-based CRAM, its reference configured: decoding looks only there; encoding
    (no_ref) and reading the output back (outside the reference lock, a header with M5
    tags) look nowhere. The process's REF_PATH names a local HTTP server standing in for
    EBI's: it sees no request."""
    import http.server
    import threading

    asked: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("REF_PATH", f"http://127.0.0.1:{server.server_address[1]}/%s")
        monkeypatch.delenv("REF_CACHE", raising=False)
        engine = Htsget(Config(locations=[LocationConfig(root=str(exact_dir))],
                               cram_reference_path=[str(exact_dir)]))
        got = []
        for name in ("ref30", "ref31"):
            for start in (3_000, 21_000, 47_000):
                regions = (Region("chr1", start, start + 900),)
                # exact=False: a container that could not be decoded would be sent whole,
                # so a lookup shows below as a request, not as a refusal
                got.append((name, regions, *payload_of(engine, query(name, regions, False),
                                                       exact_dir)))
    finally:
        server.shutdown()
    assert asked == []
    for name, regions, payload, urls in got:
        check(payload, urls, originals[name], originals[name].expected(regions), tmp_path)


def test_a_wrong_reference_is_never_used(
    exact_dir: Path, originals: dict[str, Original], tmp_path: Path
) -> None:
    """A FASTA with the right name and sequence names but other bases: htslib's slice MD5
    check refuses it, so the container is refused (restricted) or sent whole, never
    decoded into other bases."""
    engine = Htsget(Config(locations=[LocationConfig(root=str(exact_dir))],
                           cram_reference_path=[str(reference_dirs(exact_dir)["wrong"])]))
    original = originals["ref31"]
    regions = (Region("chr1", 20_000, 20_100),)
    with pytest.raises(PermissionDenied, match="reference"):
        engine.ticket(query("ref31", regions))
    payload, urls = payload_of(engine, query("ref31", regions, exact=False), exact_dir)
    assert not any(u["url"].startswith("data:") for u in urls[1:-1])
    assert check_wider(payload, original, original.expected(regions), tmp_path)


# --------------------------------------------------------------------------- re-encoding


def test_recoded_containers_decode_identically(
    exact_dir: Path, engine: Htsget, originals: dict[str, Original], tmp_path: Path
) -> None:
    """Each inline piece on its own (behind the header) holds original records, field for
    field (name, flag, position, CIGAR, mate, sequence, qualities, tags and tag types),
    and is a CRAM of the file's version whose containers need no reference."""
    for name in ["emb31", "emb30", "slices", "v21"]:
        original = originals[name]
        data = original.path.read_bytes()
        head = data[: parse_header(data)[1].end]
        eof = EOF_CONTAINER_V2 if name == "v21" else EOF_CONTAINER_V3
        regions = (Region("chr1", 12_345, 23_456), Region("chr3", 100, 7_000))
        _, urls = payload_of(engine, query(name, regions), exact_dir)
        inline = [base64.b64decode(u["url"][len("data:;base64,") :]) for u in urls[1:-1]
                  if u["url"].startswith("data:")]
        assert inline
        alone = tmp_path / "alone.cram"
        for piece in inline:
            alone.write_bytes(head + piece + eof)
            # no reference given: the re-encoded containers decode without one
            with pysam.AlignmentFile(str(alone), "rc") as f:
                got = [key(r) for r in f.fetch(until_eof=True)]
            assert got and set(got) <= set(original.keys)
            methods = block_methods(piece, data[4])
            if name in ("emb30", "slices", "v21"):  # 3.0 / 2.1 codecs only
                assert methods <= {0, 1, 2, 3, 4}, methods
            else:  # 3.1 codecs (rANS Nx16, name tokeniser, ...)
                assert methods - {0, 1, 2, 3, 4}, methods


def block_methods(containers: bytes, major: int) -> set[int]:
    """Compression methods of every block of a run of containers."""
    methods, pos = set(), 0
    while pos < len(containers):
        c = parse_container_header(containers, pos, major, pos)
        block = c.data_start
        for _ in range(c.n_blocks):
            methods.add(containers[block])
            p = block + 2
            _, p = read_itf8(containers, p)  # content ID
            size, p = read_itf8(containers, p)
            _, p = read_itf8(containers, p)  # raw size
            block = p + size + (4 if major >= 3 else 0)
        assert block == c.end
        pos = c.end
    return methods


def test_selection_rules() -> None:
    s = Selection.of([(0, 100, 200), (0, 150, 300), (0, 300, 310), (1, 50, 50), (2, 5, 9)],
                     unplaced=False)
    assert s.intervals[0] == ((100, 310),)
    assert s.wants(0, 99, 101) and s.wants(0, 309, 400) and not s.wants(0, 310, 311)
    assert not s.wants(0, 90, 100)
    assert s.wants(1, 49, 51) and not s.wants(1, 50, 51) and not s.wants(1, 40, 50)
    assert not s.wants(-1, -1, 0) and not s.wants(3, 0, 10)
    assert s.covers(0, 100, 310) and not s.covers(0, 99, 200) and not s.covers(0, 200, 311)
    assert not s.covers(-1, 0, 2) and not s.covers(-2, 0, 1) and not s.covers(1, 50, 51)
    assert Selection.of([], unplaced=True).covers(-1, 0, 2)
    assert s.key([0, 2]) != s.key([0, 1]) and s.key([-2]) == s.key([0, 1, 2, -1, -2])


def test_results_are_cached(exact_dir: Path, tmp_path: Path) -> None:
    engine = Htsget(for_data_dir(str(exact_dir)))
    q = query("nor31", (Region("chr2", 4_000, 9_000),))
    first, _ = payload_of(engine, q, exact_dir)
    misses = engine.cache.misses
    again, _ = payload_of(engine, q, exact_dir)
    assert again == first and engine.cache.misses == misses


def test_recut_budget(
    exact_dir: Path, originals: dict[str, Original], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A ticket re-encodes at most MAX_RECUTS containers (a POST of thousands of regions
    must not hold a worker for minutes): past it, the other boundary containers are derived
    blocks, each re-encoded when its url is fetched. Exact either way, restricted or not."""
    monkeypatch.setattr(cram_recode, "MAX_RECUTS", 2)
    original = originals["nor31"]
    regions = tuple(Region("chr1", s, s + 1_000) for s in (5_000, 20_000, 35_000, 50_000))
    expected = original.expected(regions)
    real = cram_recode.recode
    for exact in (False, True):
        made: list[int] = []
        with monkeypatch.context() as m:
            m.setattr(cram_recode, "recode",
                      lambda *a, made=made, **k: made.append(1) or real(*a, **k))
            engine = Htsget(for_data_dir(str(exact_dir)))  # caches of its own
            ticket = engine.ticket(query("nor31", regions, exact=exact))
        assert len(made) == 2, made
        derived = [b for b in ticket.blocks if b.headers is None and "/data/~~cram/" in b.url]
        assert derived
        payload, urls = payload_of(engine, query("nor31", regions, exact=exact), exact_dir)
        check(payload, urls, original, expected, tmp_path)


def test_without_pysam_refused(
    exact_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Htsget(for_data_dir(str(exact_dir)))
    monkeypatch.setitem(sys.modules, "pysam", None)  # import pysam -> ImportError
    with pytest.raises(PermissionDenied, match="pysam is not installed"):
        engine.ticket(query("nor30", (Region("chr1", 20_000, 20_100),)))
    # whole containers need no pysam; an ordinary query gets its boundary containers whole
    assert engine.ticket(query("nor30", (Region("chr1"),)))
    urls = engine.ticket(query("nor30", (Region("chr1", 20_000, 20_100),), exact=False)).blocks
    assert [b.url.startswith("data:") for b in urls] == [False] * (len(urls) - 1) + [True]


# --------------------------------------------------------------------------- the checks


def test_a_leak_or_a_loss_fails_the_check(
    exact_dir: Path, originals: dict[str, Original], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Broken on purpose: boundary containers sent whole (a leak), then records overlapping
    a region's start dropped (a loss): the same check as above must fail both."""
    original = originals["nor30"]
    regions = (Region("chr1", 20_000, 21_000),)
    expected = original.expected(regions)
    with monkeypatch.context() as m:
        m.setattr(Selection, "covers", lambda self, ref, beg, end: True)
        payload, urls = payload_of(Htsget(for_data_dir(str(exact_dir))), query("nor30", regions),
                                   exact_dir)
        with pytest.raises(AssertionError, match="outside the regions"):
            check(payload, urls, original, expected, tmp_path)
    # one region (its edges' records are told apart by their CIGAR's end alone), and two
    # (by `endpos`)
    two = (Region("chr1", 20_000, 21_000), Region("chr1", 22_000, 22_500))
    for broken, wanted in (("_reference_end", regions), ("endpos", two)):
        with monkeypatch.context() as m:
            m.setattr(cram_recode, broken, lambda r: r.reference_start)
            payload, urls = payload_of(Htsget(for_data_dir(str(exact_dir))),
                                       query("nor30", wanted), exact_dir)
            with pytest.raises(AssertionError, match="missing"):
                check(payload, urls, original, original.expected(wanted), tmp_path)


def test_containers_are_re_encoded_in_memory_or_else_in_a_file(
    exact_dir: Path, originals: dict[str, Original], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A container's records are decoded and re-encoded in anonymous memory (memfd): no
    temporary file is made, so a human sample's reads never reach the disk. Where memfd is
    refused (a sandbox), unlinked temporary files do the same work, record for record."""
    original = originals["nor30"]
    regions = (Region("chr1", 20_000, 21_000), Region("chr1", 40_500, 41_000))
    expected = original.expected(regions)
    if hasattr(os, "memfd_create"):
        cram_encoder.POOL.clear()
        with monkeypatch.context() as m:
            def no_file() -> None:
                raise AssertionError("a temporary file was made")

            m.setattr(cram_encoder.tempfile, "TemporaryFile", no_file)
            payload, urls = payload_of(Htsget(for_data_dir(str(exact_dir))),
                                       query("nor30", regions), exact_dir)
            check(payload, urls, original, expected, tmp_path)
    made = []
    real = cram_encoder.tempfile.TemporaryFile

    def counted() -> Any:
        made.append(1)
        return real()

    def refused(name: str, flags: int = 0) -> int:
        raise PermissionError(1, "Operation not permitted")

    cram_encoder.POOL.clear()  # (kept writers and readers have their scratch files already)
    cram_encoder.READERS.clear()
    with monkeypatch.context() as m:
        m.setattr(cram_encoder.os, "memfd_create", refused, raising=False)
        m.setattr(cram_encoder.tempfile, "TemporaryFile", counted)
        payload, urls = payload_of(Htsget(for_data_dir(str(exact_dir))), query("nor30", regions),
                                   exact_dir)
        check(payload, urls, original, expected, tmp_path)
    cram_encoder.POOL.clear()
    # the decoding's, the writer's and the check's
    assert len(made) >= 3, "memfd refused: the re-encoding must have used temporary files"


@pytest.mark.parametrize("name", ["nor30", "ref31"])
def test_a_re_encoding_takes_turns_but_never_holding_the_reference_lock(
    exact_dir: Path, originals: dict[str, Original], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path, name: str,
) -> None:
    """A container's re-encoding lets the worker's other requests go between its steps
    (turns.py): every PAUSE_RECORDS records decoded, before encoding, before checking. With
    a reference configured it decodes under `Decoding.environment`'s lock, and does not
    pause while decoding (nothing pauses holding a lock); it still pauses after. The
    records are exactly htslib's either way."""
    from htsgetr import turns
    from htsgetr.formats import cram_reference

    where = {"recode": False, "decoding": False}
    seen = {"recode": 0, "decoding": 0, "locked": 0}
    calls = {"recode": 0, "decoding": 0}

    class Counting:
        def begin(self) -> None: ...
        def end(self) -> None: ...
        def step_aside(self) -> None: ...

        def pause(self) -> None:
            seen["recode"] += where["recode"]
            seen["decoding"] += where["decoding"]
            seen["locked"] += cram_reference._ENV_LOCK.locked()

    def flagged(fn: Any, flag: str) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            where[flag] = True
            calls[flag] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                where[flag] = False
        return run

    monkeypatch.setattr(cram_recode, "recode", flagged(cram_recode.recode, "recode"))
    monkeypatch.setattr(cram_recode, "_wanted", flagged(cram_recode._wanted, "decoding"))
    monkeypatch.setattr(cram_recode, "PAUSE_RECORDS", 16)
    turns.install(Counting())
    try:
        config = Config(locations=[LocationConfig(root=str(exact_dir))],
                        cram_reference_path=[str(exact_dir)] if name == "ref31" else [])
        original = originals[name]
        regions = (Region("chr1", 20_000, 21_000), Region("chr1", 40_500, 41_000),
                   Region("chr1", 60_000, 60_500))
        payload, urls = payload_of(Htsget(config), query(name, regions), exact_dir)
    finally:
        turns.install(turns._Alone())
    check(payload, urls, original, original.expected(regions), tmp_path)
    assert seen["locked"] == 0
    recodes = calls["recode"]
    assert recodes >= 2
    assert seen["recode"] >= 2 * recodes  # before encoding, before checking, each
    if name == "ref31":
        assert seen["decoding"] == 0
    else:  # edge containers of 150 records: ~9 pauses decoding each
        assert seen["decoding"] >= 5 * recodes


def kept_writers(root: Path) -> Config:
    """A configuration whose workers keep their CRAM writers open (`cram_reproducible =
    false`)."""
    return Config(locations=[LocationConfig(root=str(root))], cram_reproducible=False)


def test_a_kept_writer_encodes_the_containers_of_later_tickets(
    exact_dir: Path, originals: dict[str, Original], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """`cram_reproducible = false`: re-encodings of one file share one CRAM writer kept open
    (cram_encoder.py: htslib's codec trials once, not per container): one writer made for
    many tickets, each exact; once its scratch file holds WRITER_BYTES it is closed and a
    new one made."""
    original = originals["nor30"]
    made: list[Any] = []

    encoded: list[int] = []

    class Counted(cram_encoder.Encoder):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

        def encode(self, records: Any) -> bytes:
            encoded.append(len(records))
            return super().encode(records)

    monkeypatch.setattr(cram_encoder, "Encoder", Counted)
    cram_encoder.POOL.clear()
    engine = Htsget(kept_writers(exact_dir))
    starts = (2_000, 12_000, 22_000, 32_000, 42_000, 52_000)  # chr1 is 60 kbp
    for start in starts:
        regions = (Region("chr1", start, start + 700),)
        payload, urls = payload_of(engine, query("nor30", regions), exact_dir)
        check(payload, urls, original, original.expected(regions), tmp_path)
    assert len(encoded) >= len(starts) and len(made) == 1 and not made[0].file.closed
    monkeypatch.setattr(cram_encoder, "WRITER_BYTES", 1)  # spent after each re-encoding
    before = len(encoded)
    for start in starts:
        regions = (Region("chr1", start + 4_000, start + 4_700),)
        payload, urls = payload_of(engine, query("nor30", regions), exact_dir)
        check(payload, urls, original, original.expected(regions), tmp_path)
    # the first re-encoding spends the writer kept before, each later one a new writer
    assert len(made) == len(encoded) - before and all(e.file.closed for e in made)
    cram_encoder.POOL.clear()


def test_the_check_reads_back_with_a_kept_reader(
    exact_dir: Path, originals: dict[str, Original], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path, capfd: pytest.CaptureFixture[str],
) -> None:
    """Re-encodings are read back by a reader kept open (`cram_encoder.Reader`), not one
    opened per check (each would parse the header again): one reader for the re-cuts of
    many tickets, each exact. Closed, it warns of no missing EOF container: htslib never
    met the end of its file."""
    original = originals["nor30"]
    made: list[Any] = []

    class Counted(cram_encoder.Reader):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(cram_encoder, "Reader", Counted)
    cram_encoder.READERS.clear()
    engine = Htsget(for_data_dir(str(exact_dir)))
    for start in (2_000, 12_000, 22_000, 32_000, 42_000, 52_000):  # chr1 is 60 kbp
        regions = (Region("chr1", start, start + 3_000),)
        payload, urls = payload_of(engine, query("nor30", regions), exact_dir)
        check(payload, urls, original, original.expected(regions), tmp_path)
    assert len(made) == 1 and made[0].end - made[0].start > 6 * cram_encoder.PEEK_BYTES
    capfd.readouterr()
    cram_encoder.READERS.clear()
    assert made[0].file.closed and "EOF marker" not in capfd.readouterr().err


def test_a_kept_reader_decides_nothing_alone(originals: dict[str, Original]) -> None:
    """An output whose records are not the ones written fails the check, kept reader or
    not; a kept reader gone wrong (here: fed its next output a byte early) is closed and
    the check decided by a new reader: it can cost time, never change an answer."""
    original = originals["nor30"]
    version, _, text = parse_header(original.path.read_bytes())
    head = cram_recode.file_head(version, coding_header(text))
    records = original.records()[:300]
    encoder = cram_encoder.Encoder(original.file.header, ["no_ref=1", "version=3.0"])
    out = encoder.encode(records)
    encoder.close()
    cram_encoder.READERS.clear()
    assert cram_encoder._check(out, records, head, EOF_CONTAINER_V3, 3) is None
    changed = pysam.AlignedSegment.from_dict(records[7].to_dict(), original.file.header)
    changed.mapping_quality = (changed.mapping_quality + 1) % 250
    other = [*records[:7], changed, *records[8:]]
    assert cram_encoder._check(out, other, head, EOF_CONTAINER_V3, 3) == \
        "re-encoding changed its records"
    assert cram_encoder._check(out, records, head, EOF_CONTAINER_V3, 3) is None
    spoiled = cram_encoder.READERS.take(head)
    assert spoiled is not None and not spoiled.file.closed
    spoiled.end -= 1
    cram_encoder.READERS.give(head, spoiled)
    assert cram_encoder._check(out, records, head, EOF_CONTAINER_V3, 3) is None
    assert spoiled.file.closed
    # one that reads back other records than those written, without an error
    assert cram_encoder._check(out, records, head, EOF_CONTAINER_V3, 3) is None  # (a new one)
    astray = cram_encoder.READERS.take(head)
    assert astray is not None and astray is not spoiled
    astray.iterator = iter(other)
    cram_encoder.READERS.give(head, astray)
    assert cram_encoder._check(out, records, head, EOF_CONTAINER_V3, 3) is None
    assert astray.file.closed
    assert cram_encoder._check(out, other, head, EOF_CONTAINER_V3, 3) == \
        "re-encoding changed its records"
    cram_encoder.READERS.clear()


def test_a_kept_writer_gone_wrong_is_closed_and_the_records_written_again(
    exact_dir: Path, originals: dict[str, Original], tmp_path: Path
) -> None:
    """A kept writer whose output is not whole containers of exactly the records (here:
    its scratch file read from one byte early) fails the check: it is closed, never kept
    again, and a new writer encodes the records; the ticket is exact all the same."""
    original = originals["nor30"]
    cram_encoder.POOL.clear()
    engine = Htsget(kept_writers(exact_dir))
    regions = (Region("chr1", 20_000, 20_700),)
    payload_of(engine, query("nor30", regions), exact_dir)
    (key,) = cram_encoder.POOL._free
    spoiled = cram_encoder.POOL.take(key)
    assert spoiled is not None
    spoiled.end -= 1
    cram_encoder.POOL.give(key, spoiled)
    regions = (Region("chr1", 48_000, 48_700),)
    payload, urls = payload_of(engine, query("nor30", regions), exact_dir)
    check(payload, urls, original, original.expected(regions), tmp_path)
    assert spoiled.file.closed
    kept = cram_encoder.POOL.take(key)
    assert kept is not None and kept is not spoiled
    kept.close()


@pytest.mark.parametrize("reproducible", [False, True])
def test_cram_reproducible_makes_tickets_the_same_bytes_everywhere(
    exact_dir: Path, originals: dict[str, Original], tmp_path: Path, reproducible: bool
) -> None:
    """`cram_reproducible = true` (the default): every re-cut a writer of its own, so two
    workers (here two engines, beside this process's kept writers, which encode other
    records meanwhile) give a region the same bytes. With false, the bytes of inline
    re-cuts follow the kept writer's history (they differ here); the records are exact
    either way."""
    original = originals["nor30"]
    regions = (Region("chr1", 14_000, 14_900), Region("chr2", 3_000, 4_000))
    payloads = []
    cram_encoder.POOL.clear()  # the first ticket's writer new; by the second, it has history
    for other in (30_000, 45_000):
        engine = Htsget(for_data_dir(str(exact_dir)) if reproducible  # the default
                        else kept_writers(exact_dir))
        payload, urls = payload_of(engine, query("nor30", regions), exact_dir)
        check(payload, urls, original, original.expected(regions), tmp_path)
        payloads.append(payload)
        # the kept writer encodes something else before the next engine's ticket
        payload_of(Htsget(kept_writers(exact_dir)),
                   query("nor30", (Region("chr1", other, other + 700),)), exact_dir)
    assert (payloads[0] == payloads[1]) is reproducible


def test_the_pool_of_kept_writers_is_bounded() -> None:
    """At most KEPT writers in all, the least recently used closed first; a spent one is
    closed, not kept; a forked child uses none of its parent's."""

    class Fake:
        def __init__(self) -> None:
            self.pid, self.spent, self.closed = os.getpid(), False, False

        def close(self) -> None:
            self.closed = True

    pool = cram_encoder.Pool(kept=3)
    made = [Fake() for _ in range(5)]
    for i, fake in enumerate(made):  # files 0, 1, 0, 1, 9: file 0 is the least recent
        pool.give(("k", i % 2 if i < 4 else 9), fake)  # type: ignore[arg-type]
    assert [f.closed for f in made] == [True, False, True, False, False]
    assert pool.take(("k", 0)) is None
    assert pool.take(("k", 1)) is made[3] and pool.take(("k", 1)) is made[1]
    assert pool.take(("k", 1)) is None
    pool.give(("k", 1), made[1])  # type: ignore[arg-type]
    pool.give(("k", 1), made[3])  # type: ignore[arg-type]
    spent = Fake()
    spent.spent = True
    pool.give("s", spent)  # type: ignore[arg-type]
    assert spent.closed and pool.take("s") is None
    pool.give("s", made[0])  # type: ignore[arg-type]
    made[0].closed = False
    made[0].pid = -1  # another process's
    assert pool.take("s") is None and not made[0].closed
    pool.forget()
    assert pool.take(("k", 1)) is None and pool.take(("k", 9)) is None
    assert not made[1].closed and not made[3].closed  # dropped unclosed: the parent's


def test_a_re_encoding_that_changes_a_record_is_refused(
    exact_dir: Path, originals: dict[str, Original], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Each re-encoded container is read back and compared with the records it was made of
    (in C, then as SAM text): an encoder that changed a record (here: every mapping quality
    written one higher) makes the container unusable re-cut, so an exact ticket is refused
    and an ordinary one gets the container whole."""
    original = originals["nor30"]
    regions = (Region("chr1", 20_000, 21_000),)
    real = pysam.AlignmentFile

    class Tampering:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.file = real(*args, **kwargs)
            self.writing = len(args) > 1 and args[1] == "wc"

        def __enter__(self) -> Tampering:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

        def __getattr__(self, name: str) -> Any:
            return getattr(self.file, name)

        def write(self, record: Any) -> Any:
            if self.writing:
                record = pysam.AlignedSegment.fromstring(record.to_string(), self.file.header)
                record.mapping_quality = (record.mapping_quality + 1) % 255
            return self.file.write(record)

    cram_encoder.POOL.clear()  # a kept writer was made before the tampering
    with monkeypatch.context() as m:
        m.setattr(pysam, "AlignmentFile", Tampering)
        engine = Htsget(for_data_dir(str(exact_dir)))
        with pytest.raises(PermissionDenied, match="re-encoding changed its records"):
            engine.ticket(query("nor30", regions))
        payload, urls = payload_of(engine, query("nor30", regions, exact=False), exact_dir)
    got = check_wider(payload, original, original.expected(regions), tmp_path)
    assert len(got) > len(original.expected(regions))


def test_unrestricted_tickets_are_exact_too(
    exact_dir: Path, engine: Htsget, originals: dict[str, Original], tmp_path: Path
) -> None:
    """exact=False (no authorization rule): the same exact records; the whole file is the
    file, byte for byte; names come in header order; unknown references are NotFound."""
    original = originals["nor30"]
    regions = (Region("chr1", 20_000, 21_000),)
    payload, urls = payload_of(engine, query("nor30", regions, exact=False), exact_dir)
    assert any(u["url"].startswith("data:") for u in urls[1:-1])
    check(payload, urls, original, original.expected(regions), tmp_path)
    assert payload == payload_of(engine, query("nor30", regions), exact_dir)[0]
    whole, _ = payload_of(engine, Query(Endpoint.READS, "nor30", Format.CRAM), exact_dir)
    assert whole == original.path.read_bytes()
    source = engine.locate("nor30", Format.CRAM)
    assert CramHandler().reference_names(source) == [n for n, _ in REFS]
    with pytest.raises(NotFound):
        engine.ticket(query("nor30", (Region("chrX", 0, 10),)))


def test_allowed_through_the_engine(
    exact_dir: Path, engine: Htsget, originals: dict[str, Original], tmp_path: Path
) -> None:
    """An authorization rule reaches the handler as exact regions via the engine."""
    original = originals["multi"]
    allowed = (Region("chr2", 1_000, 9_000), Region("chr3", 0, 700))
    q = Query(Endpoint.READS, "multi", Format.CRAM, allowed=allowed)
    payload, urls = payload_of(engine, q, exact_dir)
    check(payload, urls, original, original.expected(allowed), tmp_path)


def test_timing_first_and_cached(capsys: pytest.CaptureFixture[str]) -> None:
    """Not an assertion on speed: the figure for the report (`pytest -s`): a 10 kbp region
    of the htsnexus CRAM (10,000-record containers), its boundary containers re-encoded
    first, then from the cache."""
    path = shared("cram", f"{HTSNEXUS}.cram")
    engine = Htsget(for_data_dir(str(path.parent)))
    regions = (Region("11", 5_010_000, 5_020_000),)
    times = {}
    for label in ("first", "cached", "restricted, cached"):
        t0 = time.perf_counter()
        engine.ticket(query(HTSNEXUS, regions, exact=label.startswith("restricted")))
        times[label] = (time.perf_counter() - t0) * 1000
    with capsys.disabled():
        print(" ".join(f"{k}: {v:.1f} ms;" for k, v in times.items()))


# --------------------------------------------------------------------------- plumbing


def _original(originals: dict[str, Original], name: str) -> Original:
    if name == HTSNEXUS:
        return Original(shared("cram", f"{HTSNEXUS}.cram"), None)
    return originals[name]


def _write(tmp: Path, data: bytes) -> Path:
    out = tmp / "payload.cram"
    out.write_bytes(data)
    return out


def test_a_container_past_the_recut_bound_is_never_read_for_a_recut(
    exact_dir: Path, originals: dict[str, Original], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A container larger than `cram_max_recut_bytes` (a crafted header and CRAI may agree
    on any size) is not read into memory to be re-encoded: an ordinary ticket sends it whole
    (a superset, logged), a restricted one is refused with 403. Here the bound is configured
    below the file's containers; the storage reads are counted."""
    config = dataclasses.replace(for_data_dir(str(exact_dir)), cram_max_recut_bytes=1000)
    engine = Htsget(config)  # nothing re-cut cached yet
    original = originals["mk"]
    containers = {offset: end for offset, end, _ in original.containers()}
    whole_reads: list[tuple[int, int]] = []  # reads of a whole container, from its start
    source = engine.locate("mk", Format.CRAM)
    real_read = type(source.storage).read

    def read(self: Any, key: str, start: int, end: int) -> bytes:
        if containers.get(start, end + 1) <= end:
            whole_reads.append((start, end))
        return real_read(self, key, start, end)

    monkeypatch.setattr(type(source.storage), "read", read)
    regions = (Region("chr1", 20_000, 20_100),)
    with caplog.at_level(logging.INFO, logger="htsgetr"):
        payload, _ = payload_of(engine, query("mk", regions, exact=False), exact_dir)
    assert any("more than a re-cut reads" in r.getMessage() for r in caplog.records)
    expected = original.expected(regions)
    assert check_wider(payload, original, expected, tmp_path) != expected  # whole containers
    assert not whole_reads
    with pytest.raises(PermissionDenied) as info:
        engine.ticket(query("mk", regions))
    assert "more than a re-cut reads" in info.value.message


def _with_header_extras(source: Path, out: Path) -> Path:
    """`source` (a BAM) behind a header as real ones are: @SQ lines with AS, SP, DS, M5 and
    UR tags, several @PG lines and @CO lines (a GRCh38 header is ~0.5 MB of such)."""
    with pysam.AlignmentFile(str(source)) as f:
        header = f.header.to_dict()
        for i, sq in enumerate(header["SQ"]):
            sq.update(AS="GRCh38", SP="Homo sapiens", DS=f"contig {i}",
                      M5=hashlib.md5(sq["SN"].encode()).hexdigest(),
                      UR=f"file:///nonexistent/{sq['SN']}.fa")
        header["PG"] = [{"ID": f"tool{i}", "PN": "tool", "CL": "x " * 50} for i in range(3)]
        header["CO"] = [f"comment {i} " + "y" * 100 for i in range(5)]
        records = [r.to_dict() for r in f.fetch(until_eof=True)]
    with pysam.AlignmentFile(str(out), "wb", header=header) as w:
        for record in records:
            w.write(pysam.AlignedSegment.from_dict(record, w.header))
    return out


@pytest.mark.parametrize("version", ["3.0", "3.1"])
def test_a_recut_is_the_same_bytes_behind_the_coding_header(
    exact_dir: Path, tmp_path: Path, version: str
) -> None:
    """A re-cut is decoded, encoded and read back behind `coding_header` (@HD, @SQ with SN and
    LN only, @RG; no @PG or @CO), not the file's whole header, which htslib would parse three
    times a re-cut (~2 ms each for GRCh38's 3,366 @SQ lines). The containers it writes are
    the same bytes as behind the whole header (less M5 and UR, which would send htslib
    looking for a reference): what it drops is nothing the records depend on. Read groups,
    mates on other references, placed and unplaced unmapped reads; a half of each
    container, and each container whole."""
    bam = _with_header_extras(exact_dir / "source.bam", tmp_path / "extras.bam")
    cram = tmp_path / "extras.cram"
    samtools("view", "-C", "--output-fmt-option", f"version={version}", "--output-fmt-option",
             "no_ref=1", "--output-fmt-option", "seqs_per_slice=300", "-o", str(cram), str(bam))
    data = cram.read_bytes()
    cram_file = CramHandler().open(Htsget(for_data_dir(str(tmp_path))).locate("extras",
                                                                                Format.CRAM))
    text = cram_file.header_text
    assert b"@CO\t" in text and b"\tSP:" in text and b"\tM5:" in text
    whole = b"\n".join(
        b"\t".join(f for f in line.split(b"\t") if not f.startswith((b"M5:", b"UR:")))
        if line.startswith(b"@SQ\t") else line for line in text.split(b"\n"))
    coding = coding_header(text)
    assert len(coding) < len(whole) / 3 and b"@RG\tID:rgA" in coding
    compared = 0
    for offset, end, records in Original(cram, None).containers():
        placed = [r for r in records if r.reference_id >= 0]
        if not placed:
            continue
        middle = placed[len(placed) // 2]
        halves = [Selection.of([(middle.reference_id, 0, middle.reference_start)], False),
                  Selection.of([(r.reference_id, 0, 1 << 31) for r in placed], True)]
        for selection in halves:
            outputs = [cram_recode.recode(cram_file, data[offset:end], selection,
                                          cram_recode.Decoding(h, None, None))
                       for h in (whole, coding)]
            assert outputs[0] == outputs[1], (offset, selection.token())
            compared += bool(outputs[0])
    assert compared > 10
