"""Deep benchmark data, made once into a cache directory (`build/bench-data` for `make bench`).

- `deep15.bam` (+ .bai): ~1M reads of 150 bp at ~15x over one 10 Mbp reference, so every
  1-20 kbp region ticket re-cuts blocks in the middle of dense records.
- `deep15.vcf.gz` (+ .tbi): a variant every ~40 bp over the same reference with a few
  samples, so tabix chunks span many records and BGZF blocks cut lines in half.
- `deep15.cram` (+ .crai, no reference needed) and `deep15.bcf` (+ .csi): the same records.
- `deep15h.cram` (+ .crai): the same reads behind a header as GRCh38's full analysis set has
  (3,366 @SQ lines with M5, UR, AS and SP tags; read groups; @PG lines), ~0.5 MB.

`python bench/deep_data.py [DIR]` makes them; `bench/run.py` imports the functions.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

DEEP_REF = "chrD"
DEEP_LENGTH = 10_000_000
DEEP_READS = 1_000_000
READ_LEN = 150


def make_deep15_bam(out: Path, reads: int = DEEP_READS, length: int = DEEP_LENGTH) -> Path:
    """`reads` 150 bp reads placed uniformly at random over `length` bp (~15x by default)."""
    bam = out / "deep15.bam"
    if (out / "deep15.bam.bai").exists():
        return bam
    rng = random.Random(15)
    # distinct sequences and qualities so blocks compress about like real data (~3x), not
    # like one repeat
    seqs = ["".join(rng.choice("ACGT") for _ in range(READ_LEN)) for _ in range(257)]
    quals = ["".join(rng.choice("#+5:?FFIII") for _ in range(READ_LEN)) for _ in range(251)]
    proc = subprocess.Popen(
        ["samtools", "view", "-b", "-o", str(bam), "-"], stdin=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None
    w = proc.stdin.write
    w(f"@HD\tVN:1.6\tSO:coordinate\n@SQ\tSN:{DEEP_REF}\tLN:{length}\n")
    positions = sorted(rng.randrange(1, length - READ_LEN) for _ in range(reads))
    for i, p in enumerate(positions):
        flag = 16 if i & 1 else 0
        seq, qual = seqs[i % 257], quals[i % 251]
        w(f"q{i}\t{flag}\t{DEEP_REF}\t{p}\t60\t{READ_LEN}M\t*\t0\t0\t{seq}\t{qual}\n")
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError("samtools view failed")
    subprocess.run(["samtools", "index", str(bam)], check=True)
    return bam


def make_deep_vcf(out: Path, length: int = DEEP_LENGTH, spacing: int = 40) -> Path:
    """A bgzipped, tabix-indexed VCF with a SNV about every `spacing` bp and 4 samples."""
    vcf = out / "deep15.vcf.gz"
    if (out / "deep15.vcf.gz.tbi").exists():
        return vcf
    rng = random.Random(16)
    lines = [
        "##fileformat=VCFv4.2",
        f"##contig=<ID={DEEP_REF},length={length}>",
        '##INFO=<ID=DP,Number=1,Type=Integer,Description="Depth">',
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        '##FORMAT=<ID=GQ,Number=1,Type=Integer,Description="Quality">',
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tS1\tS2\tS3\tS4",
    ]
    gts = ["0/0", "0/1", "1/1", "./."]
    pos = 1
    while True:
        pos += rng.randint(1, 2 * spacing)
        if pos >= length:
            break
        ref, alt = rng.sample("ACGT", 2)
        samples = "\t".join(f"{rng.choice(gts)}:{rng.randint(1, 99)}" for _ in range(4))
        lines.append(
            f"{DEEP_REF}\t{pos}\t.\t{ref}\t{alt}\t{rng.randint(10, 99)}\tPASS\t"
            f"DP={rng.randint(5, 60)}\tGT:GQ\t{samples}"
        )
    plain = out / "deep15.vcf"
    plain.write_text("\n".join(lines) + "\n")
    subprocess.run(["bgzip", "-f", str(plain)], check=True)
    subprocess.run(["tabix", "-p", "vcf", str(vcf)], check=True)
    return vcf


def make_deep15_cram_bcf(out: Path) -> tuple[Path, Path]:
    """deep15.cram (no_ref) from deep15.bam and deep15.bcf from deep15.vcf.gz, indexed."""
    make_deep15_bam(out)
    make_deep_vcf(out)
    cram, bcf = out / "deep15.cram", out / "deep15.bcf"
    if not (out / "deep15.cram.crai").exists():
        subprocess.run(["samtools", "view", "-C", "--output-fmt", "cram,no_ref=1", "-o",
                        str(cram), str(out / "deep15.bam")], check=True)
        subprocess.run(["samtools", "index", str(cram)], check=True)
    if not (out / "deep15.bcf.csi").exists():
        subprocess.run(["bcftools", "view", "-Ob", "-o", str(bcf), str(out / "deep15.vcf.gz")],
                       check=True)
        subprocess.run(["bcftools", "index", "-c", str(bcf)], check=True)
    return cram, bcf


#: @SQ lines of GRCh38's full analysis set (plus decoys and HLA), which real CRAMs carry
GRCH38_SQ_LINES = 3366


def grch38_style_header(out: Path) -> Path:
    """deep15's header as a GRCh38 alignment's would be: chrD, then as many more @SQ lines as
    GRCh38's full analysis set has, each with M5/UR/AS/SP tags, four read groups, @PG lines."""
    rng = random.Random(38)
    lines = ["@HD\tVN:1.6\tSO:coordinate", f"@SQ\tSN:{DEEP_REF}\tLN:{DEEP_LENGTH}"]
    for i in range(GRCH38_SQ_LINES - 1):
        m5 = f"{rng.getrandbits(128):032x}"
        lines.append(f"@SQ\tSN:chrUn_KI27{i:04d}v1_decoy\tLN:{rng.randint(1000, 200_000)}\t"
                     f"M5:{m5}\tAS:GRCh38\tSP:Homo sapiens\t"
                     "UR:file:///refs/GRCh38_full_analysis_set_plus_decoy_hla.fa")
    lines += [f"@RG\tID:rg{i}\tSM:NA12878\tPL:ILLUMINA\tLB:lib{i}\tPU:unit{i}" for i in range(4)]
    lines += [f"@PG\tID:step{i}\tPN:aligner\tVN:1.{i}\tCL:aligner --threads 32 ref.fa r1.fq r2.fq"
              for i in range(3)]
    header = out / "grch38-style-header.sam"
    header.write_text("\n".join(lines) + "\n")
    return header


def make_deep15h_cram(out: Path) -> Path:
    """deep15h.cram (no_ref): deep15's reads behind `grch38_style_header`."""
    make_deep15_bam(out)
    cram = out / "deep15h.cram"
    if not (out / "deep15h.cram.crai").exists():
        header = grch38_style_header(out)
        reheadered = subprocess.Popen(["samtools", "reheader", str(header),
                                       str(out / "deep15.bam")], stdout=subprocess.PIPE)
        subprocess.run(["samtools", "view", "-C", "--output-fmt", "cram,no_ref=1", "-o",
                        str(cram), "-"], stdin=reheadered.stdout, check=True)
        if reheadered.wait() != 0:
            raise RuntimeError("samtools reheader failed")
        subprocess.run(["samtools", "index", str(cram)], check=True)
    return cram


def main() -> int:
    default = Path(__file__).resolve().parent.parent / "build" / "bench-data"
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    out.mkdir(parents=True, exist_ok=True)
    print(make_deep15_bam(out))
    print(make_deep_vcf(out))
    print(*make_deep15_cram_bcf(out))
    print(make_deep15h_cram(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
