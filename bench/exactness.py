"""Exactness figure of `make bench` / `make bench-check`: for random region tickets in BAM,
CRAM, VCF and BCF, the records of the reassembled ticket (fetched through the HTTP API: the
ticket endpoint, then every url — inline data, /data ranges, derived blocks) against
htslib's records for the same region (pysam `fetch`): the same list, in order. The figure is
the percentage of tickets that are exact (must be 100).

`make_small(dir)` writes the small data set bench-check uses (a few MB, seconds to make).
"""

from __future__ import annotations

import base64
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SMALL_REFS = [("chrA", 400_000), ("chrB", 250_000), ("chrEmpty", 50_000)]


def make_small(out: Path, reads: int = 30_000, seed: int = 12) -> dict[str, Path]:
    """small.bam/.cram (+ indexes) with short, long and unplaced reads, and small.vcf.gz /
    small.bcf (+ indexes) with SNVs, long deletions and symbolic alleles, made once."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"BAM": out / "small.bam", "CRAM": out / "small.cram",
             "VCF": out / "small.vcf.gz", "BCF": out / "small.bcf"}
    if all(p.exists() for p in files.values()) and (out / "small.bcf.csi").exists():
        return files
    rng = random.Random(seed)
    sam = out / "small.sam"
    with open(sam, "w") as f:
        f.write("@HD\tVN:1.6\tSO:coordinate\n")
        for name, length in SMALL_REFS:
            f.write(f"@SQ\tSN:{name}\tLN:{length}\n")
        rows = []
        for i in range(reads):
            ref, length = rng.choice(SMALL_REFS[:2])
            qlen = rng.choice([100, 150, 150, 250, rng.randint(1000, 8000)])
            pos = rng.randint(1, length - qlen)
            cigar = f"{qlen}M" if rng.random() > 0.1 else f"{qlen // 2}M{rng.randint(1, 2000)}N" \
                f"{qlen - qlen // 2}M"
            rows.append((ref, pos, f"r{i}", rng.choice([0, 16]), cigar, qlen))
        rows.sort(key=lambda r: ([n for n, _ in SMALL_REFS].index(r[0]), r[1]))
        for ref, pos, name, flag, cigar, qlen in rows:
            seq = "".join(rng.choices("ACGT", k=qlen))
            f.write(f"{name}\t{flag}\t{ref}\t{pos}\t60\t{cigar}\t*\t0\t0\t{seq}\t{'I' * qlen}\n")
        for i in range(reads // 50):  # unplaced, at the end
            f.write(f"u{i}\t4\t*\t0\t0\t*\t*\t0\t0\t{'ACGT' * 10}\t{'I' * 40}\n")
    subprocess.run(["samtools", "view", "-b", "-o", str(files["BAM"]), str(sam)], check=True)
    subprocess.run(["samtools", "index", str(files["BAM"])], check=True)
    subprocess.run(["samtools", "view", "-C", "--output-fmt-option", "no_ref=1", "-o",
                    str(files["CRAM"]), str(files["BAM"])], check=True)
    subprocess.run(["samtools", "index", str(files["CRAM"])], check=True)
    sam.unlink()
    vcf = out / "small.vcf"
    with open(vcf, "w") as f:
        f.write("##fileformat=VCFv4.2\n")
        for name, length in SMALL_REFS:
            f.write(f"##contig=<ID={name},length={length}>\n")
        f.write('##INFO=<ID=END,Number=1,Type=Integer,Description="End">\n'
                '##INFO=<ID=DP,Number=1,Type=Integer,Description="Depth">\n'
                '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
                "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ts1\ts2\n")
        for name, length in SMALL_REFS[:2]:
            pos = 1
            while True:
                pos += rng.randint(1, 120)
                if pos >= length - 3000:
                    break
                shape = rng.random()
                if shape < 0.05:
                    ref, alt, info = "A" * rng.randint(2, 2000), "A", f"DP={rng.randint(1, 99)}"
                elif shape < 0.07:
                    ref, alt, info = "A", "<DEL>", f"END={pos + rng.randint(10, 2500)}"
                else:
                    ref, alt, info = rng.choice("ACGT"), rng.choice("ACGT"), "DP=30"
                f.write(f"{name}\t{pos}\t.\t{ref}\t{alt}\t50\tPASS\t{info}\tGT\t0/1\t1/1\n")
    subprocess.run(["bgzip", "-f", str(vcf)], check=True)
    subprocess.run(["tabix", "-f", "-p", "vcf", str(files["VCF"])], check=True)
    subprocess.run(["bcftools", "view", "-Ob", "-o", str(files["BCF"]), str(files["VCF"])],
                   check=True)
    subprocess.run(["bcftools", "index", "-f", str(files["BCF"])], check=True)
    return files


class _Format:
    """How a format's records are read and compared."""

    def __init__(self, fmt: str, path: Path) -> None:
        import pysam

        self.fmt, self.path = fmt, path
        self.reads = fmt in ("BAM", "CRAM")
        self.endpoint = "reads" if self.reads else "variants"
        self.suffix = {"BAM": ".bam", "CRAM": ".cram", "VCF": ".vcf.gz", "BCF": ".bcf"}[fmt]
        self.pysam = pysam
        pysam.set_verbosity(0)  # a reassembled ticket has no index: htslib says so
        with self.open(path) as f:
            if self.reads:
                self.lengths = dict(zip(f.header.references, f.header.lengths))
            else:
                self.lengths = {c: f.header.contigs[c].length for c in f.header.contigs}

    def open(self, path: Path) -> Any:
        if self.reads:
            return self.pysam.AlignmentFile(str(path), check_sq=False)
        return self.pysam.VariantFile(str(path))

    def keys(self, records: Any) -> list[str]:
        return [r.to_string() if self.reads else str(r) for r in records]

    def expected(self, ref: str, start: Optional[int], end: Optional[int]) -> list[str]:
        with self.open(self.path) as f:
            return self.keys(f.fetch(ref, start, end))

    def records_of(self, payload: bytes, tmp: Path) -> list[str]:
        out = tmp / f"ticket{self.suffix}"
        out.write_bytes(payload)
        with self.open(out) as f:
            return self.keys(f.fetch(until_eof=True) if self.reads else f)


def reassemble_via(client: Any, ticket: dict[str, Any]) -> bytes:
    """A ticket's payload as a client gets it, through a Flask test `client`: inline blocks
    decoded, every other url's path (and query) asked of the app with its headers."""
    parts = []
    for block in ticket["htsget"]["urls"]:
        url = block["url"]
        if url.startswith("data:"):
            parts.append(base64.b64decode(url.split(",", 1)[1]))
            continue
        path = "/" + url.split("://", 1)[1].split("/", 1)[1]
        r = client.get(path, headers=block.get("headers") or {})
        if r.status_code not in (200, 206):
            raise AssertionError(f"{path}: {r.status_code}")
        parts.append(r.get_data())
    return b"".join(parts)


def exactness(files: dict[str, Path], regions: int = 50, seed: int = 5,
              record_as: str = "exact") -> dict[str, float]:
    """Percent of random region tickets whose records equal htslib's, per format (printed
    and recorded as `<record_as>.<fmt>.exact_pct`)."""
    from results import record

    from htsgetr.app import create_app
    from htsgetr.config import for_data_dir

    root = next(iter(files.values())).parent
    client = create_app(for_data_dir(str(root))).test_client()
    out = {}
    print(f"exactness: {regions} random region tickets per format, records vs htslib "
          "(through the HTTP API)")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, path in files.items():
            case = _Format(fmt, path)
            rng = random.Random(seed)
            exact = 0
            first_miss = ""
            names = [n for n in case.lengths if n != "chrEmpty"] + ["chrEmpty"]
            for i in range(regions):
                ref = names[0] if i % 10 == 9 else rng.choice(names)
                length = case.lengths[ref]
                span = rng.choice([1, rng.randint(1, 1000), rng.randint(1000, 20_000),
                                   rng.randint(20_000, 200_000)])
                start = rng.randint(0, max(0, length - 1))
                end: Optional[int] = min(length, start + span)
                begin: Optional[int] = start
                if i % 25 == 24:
                    begin, end = None, None  # the whole reference
                query = f"referenceName={ref}" + (f"&start={begin}&end={end}"
                                                   if begin is not None else "")
                r = client.get(f"/{case.endpoint}/{path.name[:-len(case.suffix)]}?{query}"
                               f"&format={fmt}")
                if r.status_code != 200:
                    raise AssertionError(f"{fmt} {query}: {r.status_code} {r.get_data()[:200]!r}")
                got = case.records_of(reassemble_via(client, r.get_json()), Path(tmp))
                want = case.expected(ref, begin, end)
                if got == want:
                    exact += 1
                elif not first_miss:
                    first_miss = f"{query}: {len(got)} records, htslib {len(want)}"
            pct = 100.0 * exact / regions
            out[fmt] = record(f"{record_as}.{fmt.lower()}.exact_pct", pct, "%")
            print(f"  {fmt:5} {pct:6.1f} % exact" + (f"   (first miss: {first_miss})"
                                                      if first_miss else ""), flush=True)
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "bench"))
    data = make_small(ROOT / "build" / "bench-check-data")
    exactness(data)
