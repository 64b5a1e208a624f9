"""`make bench` figures about bytes, memory and the index core (issue 12):

- cover: bytes a client downloads for a region ticket (header, body, re-cut edges, EOF: the
  reassembled payload) against the MINIMAL BLOCK COVER — the whole BGZF blocks that hold the
  region's records (as htslib returns them) plus the header's blocks and the EOF block —
  over random 1 kbp-1 Mbp regions, deep and sparse, BAM / VCF / BCF; aggregate and worst.
  CRAM: against the whole containers that overlap the region (what a container-granular
  server sends), since a CRAM record has no byte offset of its own.
- rss: a worker's resident memory after tickets on 50 distinct IDs, each with a multi-MB
  BAI, against its `cache_bytes` (must stay within cache_bytes + 50 MB).
- index core: parsing BAI / CSI / TBI / CRAI in MB/s of index file, and a chunk query in
  µs, the Cython core against its pure-Python twin (tests/ranges_twin.py).
"""

from __future__ import annotations

import gzip
import os
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from exactness import reassemble_via  # noqa: E402
from results import record  # noqa: E402

EOF_BYTES = 28


# --------------------------------------------------------------------------- cover


def block_starts(path: Path) -> list[int]:
    """Compressed offsets of every BGZF block of `path` (its last: the EOF block)."""
    starts, pos = [], 0
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        while pos < size:
            f.seek(pos)
            head = f.read(18)
            if len(head) < 18 or head[:4] != b"\x1f\x8b\x08\x04":
                raise ValueError(f"{path}: no BGZF block at {pos}")
            starts.append(pos)
            pos += struct.unpack_from("<H", head, 16)[0] + 1
    return starts


class Spans:
    """Each record's [start, end) virtual offsets in one file, from one sequential read by
    htslib (pysam `tell()`), keyed so a region's records can be found from `fetch`."""

    def __init__(self, path: Path, fmt: str) -> None:
        import pysam

        self.fmt, self.path = fmt, path
        self.reads = fmt == "BAM"
        f: Any = pysam.AlignmentFile(str(path)) if self.reads else pysam.VariantFile(str(path))
        self.file = f
        it = f.fetch(until_eof=True) if self.reads else f.fetch()
        self.first = f.tell()  # the header's end: where the first record starts
        self.spans: dict[Any, list[tuple[int, int]]] = {}
        here = self.first
        for rec in it:
            after = f.tell()
            self.spans.setdefault(self.key(rec), []).append((here, after))
            here = after
        self.blocks = block_starts(path)

    def key(self, rec: Any) -> Any:
        if self.reads:
            return (rec.query_name, rec.flag, rec.reference_id, rec.reference_start)
        return (rec.chrom, rec.pos, rec.ref, rec.alts, rec.id)

    def region(self, ref: str, start: int, end: int) -> tuple[int, int] | None:
        """The virtual offsets from the first to past the last record htslib returns."""
        lo = hi = None
        seen: dict[Any, int] = {}
        for rec in self.file.fetch(ref, start, end):
            k = self.key(rec)
            i = seen.get(k, 0)
            seen[k] = i + 1
            s, e = self.spans[k][i]
            lo = s if lo is None else min(lo, s)
            hi = e if hi is None else max(hi, e)
        return None if lo is None else (lo, hi)  # type: ignore[return-value]

    def cover(self, voffsets: list[tuple[int, int]]) -> int:
        """Bytes of the whole blocks touched by each [vbeg, vend) (a union), plus EOF."""
        import bisect

        blocks = self.blocks
        touched: set[int] = set()
        for vbeg, vend in voffsets:
            first = bisect.bisect_right(blocks, vbeg >> 16) - 1
            last_c = (vend >> 16) if (vend & 0xFFFF) else (vend >> 16) - 1
            last = bisect.bisect_right(blocks, last_c) - 1
            touched.update(range(first, last + 1))
        touched.discard(len(blocks) - 1)
        return sum(blocks[i + 1] - blocks[i] for i in touched) + EOF_BYTES


def bench_cover(files: dict[str, tuple[str, Path]], regions: int = 40, seed: int = 21) -> None:
    """Ticket bytes vs the minimal block cover, per file, over random 1 kbp-1 Mbp regions."""
    import pysam

    from htsgetr.app import create_app
    from htsgetr.config import for_data_dir

    print(f"bytes: reassembled ticket vs minimal block cover, {regions} random 1 kbp-1 Mbp "
          "regions per file")
    clients: dict[Path, Any] = {}
    for label, (fmt, path) in files.items():
        root = path.parent
        if root not in clients:
            clients[root] = create_app(for_data_dir(str(root))).test_client()
        client = clients[root]
        endpoint = "variants" if fmt in ("VCF", "BCF") else "reads"
        stem = path.name.split(".")[0]
        rng = random.Random(seed)
        if fmt == "CRAM":
            with pysam.AlignmentFile(str(path)) as f:
                lengths = dict(zip(f.references, f.lengths))
            spans = None
        else:
            spans = Spans(path, fmt)
            f = spans.file
            lengths = (dict(zip(f.references, f.lengths)) if fmt == "BAM"
                       else {c: f.header.contigs[c].length for c in f.header.contigs})
        names = [n for n, ln in lengths.items() if ln]
        total_ours = total_min = 0
        worst = 0.0
        for _ in range(regions):
            ref = rng.choice(names)
            span = int(10 ** rng.uniform(3, 6))
            start = rng.randrange(0, max(1, lengths[ref] - span))
            end = min(lengths[ref], start + span)
            if spans is not None:
                body = spans.region(ref, start, end)
                if body is None:
                    continue
                minimal = spans.cover([(0, spans.first), body])
            else:
                minimal = _cram_container_cover(path, ref, start, end)
                if minimal is None:
                    continue
            r = client.get(f"/{endpoint}/{stem}?format={fmt}&referenceName={ref}"
                           f"&start={start}&end={end}")
            if r.status_code != 200:
                raise AssertionError(f"{label} {ref}:{start}-{end}: {r.status_code}")
            ours = len(reassemble_via(client, r.get_json()))
            total_ours += ours
            total_min += minimal
            worst = max(worst, ours / minimal)
        agg = total_ours / total_min if total_min else float("nan")
        what = "whole-container cover" if fmt == "CRAM" else "minimal cover"
        print(f"  {label:14} ticket bytes / {what}: aggregate {agg:5.3f}x   worst region "
              f"{worst:5.3f}x")
        record(f"cover.{label}.aggregate", agg, "x (bytes)")
        record(f"cover.{label}.worst", worst, "x (bytes)")


def _cram_container_cover(path: Path, ref: str, start: int, end: int) -> int | None:
    """Bytes of the containers (CRAI) overlapping the region, plus header and EOF."""
    import pysam

    with pysam.AlignmentFile(str(path)) as f:
        ref_id = f.get_tid(ref)
    rows = []
    with gzip.open(str(path) + ".crai", "rt") as crai:
        for line in crai:
            seq, beg, span, coff, _slice_off, _size = (int(x) for x in line.split("\t"))
            rows.append((seq, beg, span, coff))
    offsets = sorted({r[3] for r in rows})
    size = os.path.getsize(path)
    eof = size - 38
    hit = {coff for seq, beg, span, coff in rows
           if seq == ref_id and beg - 1 < end and beg - 1 + span > start}
    if not hit:
        return None
    total = offsets[0] + 38  # file definition + header container, and the EOF container
    for i, coff in enumerate(offsets):
        if coff in hit:
            total += (offsets[i + 1] if i + 1 < len(offsets) else eof) - coff
    return total


# --------------------------------------------------------------------------- rss


def _rss_child(data: str, n: int, cache_bytes: int) -> None:  # pragma: no cover - subprocess
    """Run in a fresh interpreter: tickets on n distinct IDs; print RSS before and after."""
    import resource  # noqa: F401

    from htsgetr.config import for_data_dir
    from htsgetr.engine import Htsget
    from htsgetr.protocol import Endpoint, parse_get

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    config = for_data_dir(data)
    config.cache_bytes = cache_bytes
    engine = Htsget(config)
    engine.ticket(parse_get(Endpoint.READS, "g0", {"referenceName": "chr1", "start": "0",
                                                    "end": "1000"}))
    before = rss()
    rng = random.Random(5)
    for i in range(n):
        for _ in range(3):
            chrom = f"chr{rng.randint(1, 22)}"
            s = rng.randrange(0, 40_000_000)
            engine.ticket(parse_get(Endpoint.READS, f"g{i}", {
                "referenceName": chrom, "start": str(s), "end": str(s + 10_000)}))
    print(before, rss(), engine.cache._bytes)


def bench_rss(genome: Path, n: int = 50) -> None:
    """A worker's RSS growth after tickets on `n` distinct IDs, each with a multi-MB BAI
    (hard links to one BAM and its index — a symlink out of the root is refused — are
    distinct cache entries, as distinct files are)."""
    bai_mb = (genome.parent / "genome.bam.bai").stat().st_size / 1e6
    with tempfile.TemporaryDirectory(dir=genome.parent) as tmp:
        for i in range(n):
            os.link(genome, f"{tmp}/g{i}.bam")
            os.link(str(genome) + ".bai", f"{tmp}/g{i}.bam.bai")
        print(f"memory: RSS of one worker after tickets on {n} IDs with a {bai_mb:.1f} MB BAI each")
        for cache_mib in (64, 512):
            code = (f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import micro; "
                    f"micro._rss_child({tmp!r}, {n}, {cache_mib << 20})")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True, cwd=ROOT).stdout.split()
            before, after = int(out[-3]), int(out[-2])
            grown = (after - before) / 1e6
            within = grown <= cache_mib * 1.048576 + 50
            print(f"  cache_bytes {cache_mib:4d} MiB: RSS grew {grown:7.1f} MB "
                  f"({'within' if within else 'PAST'} cache_bytes + 50 MB)")
            record(f"rss.cache_{cache_mib}mib.grown_mb", grown, "MB")


# --------------------------------------------------------------------------- index core


def _best(fn: Callable[[], object], rounds: int = 5, inner: int = 1) -> float:
    """Best-of-`rounds` seconds per call of `fn` (each round `inner` calls)."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


def make_index_set(data: Path) -> dict[str, Path]:
    """A multi-MB BAI (genome.bam's), its CSI, a TBI and CSI of a sparse GRCh38-wide VCF, and
    a CRAI of genome.bam as CRAM; made once."""
    out = {"BAI": data / "genome.bam.bai", "CSI": data / "genome.csi.bam.csi",
           "TBI": data / "sparse.vcf.gz.tbi", "CRAI": data / "genome.cram.crai"}
    if not out["CSI"].exists():
        link = data / "genome.csi.bam"
        if not link.exists():
            os.symlink(data / "genome.bam", link)
        subprocess.run(["samtools", "index", "-c", str(link)], check=True)
    if not out["TBI"].exists():
        from run import GRCH38, NAMES

        vcf = data / "sparse.vcf"
        rng = random.Random(9)
        with open(vcf, "w") as f:
            f.write("##fileformat=VCFv4.2\n")
            for name, length in zip(NAMES, GRCH38):
                f.write(f"##contig=<ID={name},length={length}>\n")
            f.write("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
            for name, length in zip(NAMES, GRCH38):
                for pos in range(1, length, 20_000):
                    f.write(f"{name}\t{pos + rng.randrange(10_000)}\t.\tA\tG\t50\tPASS\t.\n")
        subprocess.run(["bgzip", "-f", str(vcf)], check=True)
        subprocess.run(["tabix", "-p", "vcf", str(data / "sparse.vcf.gz")], check=True)
    if not out["CRAI"].exists():
        subprocess.run(["samtools", "view", "-C", "--output-fmt-option", "no_ref=1",
                        "--output-fmt-option", "seqs_per_slice=100", "-o",
                        str(data / "genome.cram"), str(data / "genome.bam")], check=True)
        subprocess.run(["samtools", "index", str(data / "genome.cram")], check=True)
    out["CRAI-WGS"] = data / "wgs-synthetic.cram.crai"
    if not out["CRAI-WGS"].exists():
        out["CRAI-WGS"].write_bytes(gzip.compress(_wgs_crai_text()))
    return out


def _wgs_crai_text() -> bytes:
    """A CRAI as a 30x whole genome's CRAM has: a line per 10,000-read container (~50-80
    kbp of GRCh38's 24 chromosomes each, ~350 KB apart), ~52,000 lines, then the unplaced
    reads' containers."""
    from run import GRCH38

    rng = random.Random(30)
    lines, offset = [], 30_000
    for ref, length in enumerate(GRCH38[:24]):
        pos = 10_000
        while pos < length:
            span, size = rng.randint(40_000, 80_000), rng.randint(300_000, 400_000)
            lines.append(f"{ref}\t{pos}\t{span}\t{offset}\t{rng.randint(150, 300)}\t{size}")
            offset, pos = offset + size, pos + span - 150
    lines += [f"-1\t0\t1\t{offset + 300_000 * i}\t200\t300000" for i in range(200)]
    return ("\n".join(lines) + "\n").encode()


def _parse_all(parse: Callable[[bytes], Any], plain: bytes) -> Any:
    """Parse, then decode every reference (the Cython core decodes them lazily)."""
    idx = parse(plain)
    for ref in range(idx.n_ref):
        idx.query(ref, 0, 1)
    return idx


_FLUSH = bytearray(8 << 20)  # more than this machine's caches hold


def _cold(query: Callable[..., object], queries: list[tuple[int, int, int]]) -> float:
    """Median seconds of a query run after 8 MiB of other memory traffic: what a query costs
    a worker that served other requests in between (its index no longer in the caches)."""
    times = []
    for q in queries:
        _FLUSH[::64] = b"\x01" * (len(_FLUSH) // 64)
        t0 = time.perf_counter()
        query(*q)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_index_core(data: Path) -> None:
    """Index parsing MB/s per kind and chunk query µs, Cython core vs the pure-Python twin."""
    import ranges_twin

    from htsgetr import _ranges
    from htsgetr.formats.bgzf import inflate
    from htsgetr.index.crai import Crai

    files = make_index_set(data)
    print("index core: parse (every reference decoded) in MB/s of index file; query in us")
    for kind, path in files.items():
        raw = path.read_bytes()
        mb = len(raw) / 1e6
        if kind.startswith("CRAI"):
            t = _best(partial(Crai.parse, raw), rounds=5)
            t_py = _best(partial(lambda r: ranges_twin.parse_crai(inflate(r)), raw), rounds=2)
            lines = len(Crai.parse(raw).lines[0])
            print(f"  {kind:8} {mb:6.2f} MB   parse {mb / t:8.1f} MB/s (twin {mb / t_py:6.1f}, "
                  f"{t_py / t:4.0f}x; {lines} lines in {t * 1e3:.1f} ms)")
            key = kind.lower().replace("-", "_")
            record(f"index_core.{key}.parse_mb_s", mb / t, "MB/s")
            record(f"index_core.{key}.parse_ms", t * 1e3, "ms", better="lower")
            continue
        plain = raw if kind == "BAI" else inflate(raw)
        parse = {"BAI": _ranges.parse_bai, "CSI": _ranges.parse_csi,
                 "TBI": _ranges.parse_tbi}[kind]
        twin_parse = {"BAI": ranges_twin.parse_bai, "CSI": ranges_twin.parse_csi,
                      "TBI": ranges_twin.parse_tbi}[kind]

        full = partial(_parse_all, parse, plain)
        t_c = _best(full, rounds=5)
        t_py = _best(partial(twin_parse, plain), rounds=2)
        idx, twin = full(), twin_parse(plain)
        rng = random.Random(3)
        queries = []
        for _ in range(2000):
            ref = rng.randrange(idx.n_ref)
            s = rng.randrange(0, 50_000_000)
            queries.append((ref, s, s + rng.choice([1000, 20_000, 1_000_000])))
        for q in queries[:200]:  # cross-check while here: the twin is the reference
            if idx.query(*q) != twin.query(*q):
                raise AssertionError(f"{kind}: the Cython core and its twin differ on {q}")
        q_c = statistics.median(_best(partial(idx.query, *q), rounds=3, inner=20)
                                for q in queries[:300])
        q_py = statistics.median(_best(partial(twin.query, *q), rounds=3, inner=5)
                                 for q in queries[:100])
        q_cold = _cold(idx.query, queries[:300])
        print(f"  {kind:4} {mb:6.2f} MB   parse {mb / t_c:8.1f} MB/s (twin {mb / t_py:6.1f}, "
              f"{t_py / t_c:5.0f}x)   query {q_c * 1e6:6.2f} us (twin {q_py * 1e6:7.1f}, "
              f"{q_py / q_c:4.0f}x; caches flushed before it {q_cold * 1e6:6.2f} us)")
        record(f"index_core.{kind.lower()}.query_cold_us", q_cold * 1e6, "us")
        record(f"index_core.{kind.lower()}.parse_mb_s", mb / t_c, "MB/s")
        record(f"index_core.{kind.lower()}.twin_parse_mb_s", mb / t_py, "MB/s")
        record(f"index_core.{kind.lower()}.parse_speedup", t_py / t_c, "x (time)",
               better="higher")
        record(f"index_core.{kind.lower()}.query_us", q_c * 1e6, "us")
        record(f"index_core.{kind.lower()}.query_speedup", q_py / q_c, "x (time)",
               better="higher")


def main(data: Path) -> None:
    from deep_data import make_deep15_bam, make_deep_vcf
    from exactness import make_small

    bench_index_core(data)
    bench_rss(data / "genome.bam")
    small = make_small(ROOT / "build" / "bench-check-data")
    deep = make_deep15_bam(data)
    make_deep_vcf(data)
    bench_cover({
        "bam.deep": ("BAM", deep), "bam.sparse": ("BAM", data / "genome.bam"),
        "bam.small": ("BAM", small["BAM"]), "vcf.deep": ("VCF", data / "deep15.vcf.gz"),
        "vcf.small": ("VCF", small["VCF"]), "bcf.deep": ("BCF", data / "deep15.bcf"),
        "bcf.small": ("BCF", small["BCF"]), "cram.deep": ("CRAM", data / "deep15.cram"),
        "cram.small": ("CRAM", small["CRAM"]),
    })


if __name__ == "__main__":
    main(ROOT / "build" / "bench-data")
