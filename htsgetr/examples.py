"""Generate the example data `make serve` serves: `python -m htsgetr.examples DIR`.

Uses samtools, bcftools, bgzip and tabix (installed by `make`), so the package needs no
test-only dependency to produce it. Deterministic: the same DIR contents every time.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

REFS = [("chr1", 200_000), ("chr2", 150_000), ("chrM", 16_569)]


def _run(*args: str, stdin: bytes | None = None) -> None:
    subprocess.run(args, input=stdin, check=True)


def _sam(rng: random.Random, n_reads: int) -> str:
    lines = ["@HD\tVN:1.6\tSO:unsorted"]
    lines += [f"@SQ\tSN:{name}\tLN:{length}" for name, length in REFS]
    lines.append("@RG\tID:rg1\tSM:example")
    reads = []
    for i in range(n_reads):
        name, length = rng.choice(REFS)
        qlen = rng.choice([50, 100, 150])
        pos = rng.randint(1, length - qlen)
        seq = "".join(rng.choice("ACGT") for _ in range(qlen))
        flag = rng.choice([0, 16])
        reads.append(f"read{i}\t{flag}\t{name}\t{pos}\t60\t{qlen}M\t*\t0\t0\t{seq}\t{'I' * qlen}"
                     "\tRG:Z:rg1")
    for i in range(n_reads // 20):
        reads.append(f"unplaced{i}\t4\t*\t0\t0\t*\t*\t0\t0\tACGTACGTAC\tIIIIIIIIII\tRG:Z:rg1")
    return "\n".join(lines + reads) + "\n"


def _vcf(rng: random.Random, n: int) -> str:
    lines = ["##fileformat=VCFv4.2"]
    lines += [f"##contig=<ID={name},length={length}>" for name, length in REFS]
    lines.append('##INFO=<ID=DP,Number=1,Type=Integer,Description="Depth">')
    lines.append("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO")
    records = sorted((rng.randrange(len(REFS)), rng.randint(1, REFS[0][1] // 2)) for _ in range(n))
    for i, (c, pos) in enumerate(records):
        pos = min(pos, REFS[c][1])
        lines.append(f"{REFS[c][0]}\t{pos}\tvar{i}\tA\tG\t50\tPASS\tDP={rng.randint(1, 99)}")
    return "\n".join(lines) + "\n"


def _fasta(rng: random.Random) -> str:
    out = []
    for name, length in REFS:
        seq = "".join(rng.choice("ACGT") for _ in range(length // 10))
        out.append(f">{name}\n" + "\n".join(seq[i:i + 60] for i in range(0, len(seq), 60)))
    return "\n".join(out) + "\n"


def generate(out: Path, n_reads: int = 20_000, n_variants: int = 5_000) -> None:
    """Write example.bam/.cram (+ indexes), example.vcf.gz/.bcf (+ indexes), example.fa."""
    for tool in ("samtools", "bcftools", "bgzip", "tabix"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed to generate example data (apt install {tool})")
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(42)
    sam = out / "example.sam"
    sam.write_text(_sam(rng, n_reads))
    _run("samtools", "sort", "-o", str(out / "example.bam"), str(sam))
    sam.unlink()
    _run("samtools", "index", str(out / "example.bam"))
    # no_ref: sequences stored in the CRAM itself, so no reference is looked up (htslib would
    # print "[E::cram_get_ref] Failed to populate reference"), and none is needed to read it
    _run("samtools", "view", "-C", "-O", "cram,no_ref", "-o", str(out / "example.cram"),
         str(out / "example.bam"))
    _run("samtools", "index", str(out / "example.cram"))
    vcf = out / "example.vcf"
    vcf.write_text(_vcf(rng, n_variants))
    _run("bgzip", "-f", str(vcf))
    _run("tabix", "-f", "-p", "vcf", str(out / "example.vcf.gz"))
    _run("bcftools", "view", "-Ob", "-o", str(out / "example.bcf"), str(out / "example.vcf.gz"))
    _run("bcftools", "index", "-f", str(out / "example.bcf"))
    (out / "example.fa").write_text(_fasta(rng))
    _run("samtools", "faidx", str(out / "example.fa"))


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "example-data")
    if (out / "example.bam.bai").exists():
        return 0
    generate(out)
    print(f"example data in {out}/: IDs example (reads, variants, sequences)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
