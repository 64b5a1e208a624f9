"""/sequences: FASTA regions equal `samtools faidx`, FASTQ reads equal `samtools fqidx`.

Plain and bgzipped (with and without a .gzi) FASTA with several line widths and a short last
line; FASTQ plain and bgzipped, whole file and single reads; one gunicorn end-to-end run.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import unquote, urlparse

import pytest
import requests
from conftest import Server, reassemble, serve_dir

from htsgetr.config import for_data_dir
from htsgetr.engine import Htsget
from htsgetr.formats import bgzf
from htsgetr.index.fai import Fai, load_block_map
from htsgetr.protocol import (
    Class,
    Endpoint,
    Format,
    InvalidInput,
    InvalidRange,
    NotFound,
    Query,
    Region,
    parse_get,
)

pytestmark = pytest.mark.skipif(
    shutil.which("samtools") is None or shutil.which("bgzip") is None,
    reason="samtools/bgzip not installed",
)

#: (name, length, line width): several widths, last lines shorter, a one-line sequence,
#: a sequence shorter than one line, and one exactly a multiple of its width
SEQS = [("chr1", 300_007, 60), ("chrM", 123, 50), ("chr2", 150_000, 70),
        ("one_line", 777, 1000), ("exact", 600, 60), ("chr3", 90_001, 80)]
LENGTHS = {n: ln for n, ln, _ in SEQS}


def run(*args: str, stdin: Optional[bytes] = None) -> str:
    out = subprocess.run(list(args), capture_output=True, input=stdin, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout.decode()


def write_fasta(path: Path, seed: int = 1) -> None:
    rng = random.Random(seed)
    with path.open("w") as f:
        for name, length, width in SEQS:
            seq = "".join(rng.choice("ACGTNacgt") for _ in range(length))
            f.write(f">{name} some description\n")
            f.write("\n".join(seq[i : i + width] for i in range(0, length, width)) + "\n")


def write_fastq(path: Path, n: int = 2000, seed: int = 2) -> None:
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            length = rng.randint(20, 300)
            seq = "".join(rng.choice("ACGT") for _ in range(length))
            qual = "".join(chr(33 + rng.randint(0, 40)) for _ in range(length))
            comment = f" comment {i}" if i % 3 else ""
            f.write(f"@read{i}{comment}\n{seq}\n+\n{qual}\n")


@pytest.fixture(scope="module")
def seq_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sequences")
    write_fasta(d / "genome.fa")
    run("samtools", "faidx", str(d / "genome.fa"))
    shutil.copy(d / "genome.fa", d / "zipped.fa")
    run("bgzip", "-i", str(d / "zipped.fa"))  # zipped.fa.gz + .gzi
    run("samtools", "faidx", str(d / "zipped.fa.gz"))
    shutil.copy(d / "zipped.fa.gz", d / "nogzi.fasta.gz")  # a .fasta.gz with no .gzi
    shutil.copy(d / "zipped.fa.gz.fai", d / "nogzi.fasta.gz.fai")
    shutil.copy(d / "genome.fa", d / "noindex.fasta")
    (d / "plaingz.fa.gz").write_bytes(gzip.compress((d / "genome.fa").read_bytes()))
    shutil.copy(d / "genome.fa.fai", d / "plaingz.fa.gz.fai")  # useless: not BGZF
    write_fastq(d / "reads.fq")
    run("samtools", "fqidx", str(d / "reads.fq"))
    shutil.copy(d / "reads.fq", d / "zreads.fastq")
    run("bgzip", "-i", str(d / "zreads.fastq"))
    run("samtools", "fqidx", str(d / "zreads.fastq.gz"))
    # a FASTQ whose last record has no trailing newline
    text = (d / "reads.fq").read_text()
    (d / "nonl.fq").write_text(text[:-1])
    run("samtools", "fqidx", str(d / "nonl.fq"))
    return d


@pytest.fixture(scope="module")
def engine(seq_dir: Path) -> Htsget:
    return Htsget(for_data_dir(str(seq_dir)))


def payload_of(engine: Htsget, query: Query, root: Path) -> tuple[bytes, list[dict]]:
    """Reassemble at engine level: inline blocks decoded, byte ranges read from disk."""
    urls = engine.ticket(query).to_json()["htsget"]["urls"]
    out = []
    for block in urls:
        url = block["url"]
        if url.startswith("data:"):
            assert url.startswith("data:;base64,")
            out.append(base64.b64decode(url[len("data:;base64,") :]))
            continue
        key = unquote(urlparse(url).path.split("/data/", 1)[1])
        first, last = (int(x) for x in block["headers"]["Range"].split("=")[1].split("-"))
        with open(root / key, "rb") as f:
            f.seek(first)
            out.append(f.read(last - first + 1))
    return b"".join(out), urls


def text_of(payload: bytes) -> str:
    """Plain text of a payload; a BGZF payload must end with the EOF marker."""
    if payload[:2] == b"\x1f\x8b":
        assert payload.endswith(bgzf.EOF_MARKER)
        assert not payload[: -len(bgzf.EOF_MARKER)].endswith(bgzf.EOF_MARKER)
        return gzip.decompress(payload).decode()
    return payload.decode()


def fasta_records(text: str) -> list[tuple[str, str]]:
    """(header line, sequence) pairs, line wrapping ignored."""
    records: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith(">"):
            records.append((line, []))
        else:
            assert records, "sequence before the first header"
            records[-1][1].append(line.strip())
    return [(h, "".join(s)) for h, s in records]


def faidx(path: Path, *regions: str) -> list[tuple[str, str]]:
    return fasta_records(run("samtools", "faidx", str(path), *regions))


def fastq_records(text: str) -> list[tuple[str, str, str]]:
    """(name, sequence, qualities), line wrapping ignored (samtools wraps at 60)."""
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        assert lines[i].startswith("@"), lines[i]
        name, seq, i = lines[i][1:].split()[0], "", i + 1
        while not lines[i].startswith("+"):
            seq, i = seq + lines[i], i + 1
        qual, i = "", i + 1
        while len(qual) < len(seq):
            qual, i = qual + lines[i], i + 1
        assert len(qual) == len(seq)
        out.append((name, seq, qual))
    return out


def seq_query(id: str, regions: Optional[list[Region]] = None, fmt: Format = Format.FASTA,
              klass: Optional[Class] = None) -> Query:
    regs = None if regions is None else tuple(regions)
    return Query(Endpoint.SEQUENCES, id, fmt, klass, regs)


def region_string(region: Region) -> str:
    if region.start is None and region.end is None:
        return region.reference_name
    start = (region.start or 0) + 1
    end = LENGTHS[region.reference_name] if region.end is None else region.end
    return f"{region.reference_name}:{start}-{end}"


# --------------------------------------------------------------------------- FASTA


@pytest.mark.parametrize("id,file", [("genome", "genome.fa"), ("zipped", "zipped.fa.gz"),
                                     ("nogzi", "nogzi.fasta.gz")])
def test_random_regions_equal_faidx(engine: Htsget, seq_dir: Path, id: str, file: str) -> None:
    rng = random.Random(id)
    for i in range(150):
        name = rng.choice(list(LENGTHS))
        length = LENGTHS[name]
        start = rng.randint(0, length - 1)
        if i % 3 == 0:  # start exactly at a line boundary
            width = dict((n, w) for n, _, w in SEQS)[name]
            start = min(length - 1, rng.randint(0, length // width) * width)
        end = min(length, start + rng.choice([1, 2, 59, 60, 61, 70, 1000, 65_280, 200_000]))
        if i % 10 == 1:
            end = length + 100  # past the end: clipped, as samtools does
        region = Region(name, start, end)
        payload, _ = payload_of(engine, seq_query(id, [region]), seq_dir)
        got = fasta_records(text_of(payload))
        assert got == faidx(seq_dir / file, region_string(region)), region
        assert got[0][0] == f">{name}:{start + 1}-{end}"
        assert payload.endswith(bgzf.EOF_MARKER if id != "genome" else b"\n")


@pytest.mark.parametrize("id,file", [("genome", "genome.fa"), ("zipped", "zipped.fa.gz")])
def test_defaults_and_whole_sequences(engine: Htsget, seq_dir: Path, id: str, file: str) -> None:
    for region in [Region("chr1"), Region("chrM"), Region("exact"), Region("one_line"),
                   Region("chr2", 1000), Region("chr3", None, 5000), Region("chr1", 0, 300_007)]:
        payload, _ = payload_of(engine, seq_query(id, [region]), seq_dir)
        got = fasta_records(text_of(payload))
        assert got == faidx(seq_dir / file, region_string(region)), region


def test_plain_region_is_cut_exactly(engine: Htsget, seq_dir: Path) -> None:
    """Header inline, then one byte range starting and ending exactly at the bases."""
    payload, urls = payload_of(engine, seq_query("genome", [Region("chr1", 61, 185)]), seq_dir)
    assert [u["url"][:13] for u in urls if u["url"].startswith("data:")] == ["data:;base64,"] * 2
    ranges = [u for u in urls if not u["url"].startswith("data:")]
    assert len(ranges) == 1
    first, last = (int(x) for x in ranges[0]["headers"]["Range"].split("=")[1].split("-"))
    data = (seq_dir / "genome.fa").read_bytes()[first : last + 1]
    assert data.replace(b"\n", b"") == faidx(seq_dir / "genome.fa", "chr1:62-185")[0][1].encode()
    assert payload == b">chr1:62-185\n" + data + b"\n"


def test_bgzf_region_uses_whole_blocks(engine: Htsget, seq_dir: Path) -> None:
    """A long region: whole blocks as byte ranges of the .gz, only the ends inline."""
    payload, urls = payload_of(engine, seq_query("zipped", [Region("chr1", 100, 290_000)]), seq_dir)
    ranges = [u for u in urls if not u["url"].startswith("data:")]
    assert len(ranges) == 1
    first, last = (int(x) for x in ranges[0]["headers"]["Range"].split("=")[1].split("-"))
    blocks = load_block_map_for(seq_dir / "zipped.fa.gz")
    assert first in blocks.coffsets and last + 1 in blocks.coffsets
    assert last - first > 50_000
    inline = sum(len(u["url"]) for u in urls if u["url"].startswith("data:"))
    assert inline < 200_000
    assert fasta_records(text_of(payload)) == faidx(seq_dir / "zipped.fa.gz", "chr1:101-290000")


def load_block_map_for(path: Path) -> Any:
    from htsgetr.storage.local import LocalStorage

    storage = LocalStorage(str(path.parent), "http://x")
    gzi = path.with_name(path.name + ".gzi")
    return load_block_map(storage, path.name, gzi.read_bytes() if gzi.exists() else None)


def test_gzi_and_walked_block_maps_agree(seq_dir: Path) -> None:
    with_gzi = load_block_map_for(seq_dir / "zipped.fa.gz")
    walked = load_block_map_for(seq_dir / "nogzi.fasta.gz")
    assert with_gzi == walked
    assert len(with_gzi.coffsets) > 5
    assert with_gzi.total == (seq_dir / "genome.fa").stat().st_size


@pytest.mark.parametrize("id,file", [("genome", "genome.fa"), ("zipped", "zipped.fa.gz")])
def test_several_regions(engine: Htsget, seq_dir: Path, id: str, file: str) -> None:
    regions = [Region("chr2", 5, 90_000), Region("chrM"), Region("chr2", 80_000, 80_001),
               Region("chr1", 299_000), Region("chr2", 5, 90_000)]
    payload, _ = payload_of(engine, seq_query(id, regions), seq_dir)
    expected = faidx(seq_dir / file, *(region_string(r) for r in regions))
    assert fasta_records(text_of(payload)) == expected
    assert len(expected) == 5


@pytest.mark.parametrize("id,file", [("genome", "genome.fa"), ("zipped", "zipped.fa.gz"),
                                     ("nogzi", "nogzi.fasta.gz"), ("plaingz", "plaingz.fa.gz"),
                                     ("noindex", "noindex.fasta")])
def test_whole_file(engine: Htsget, seq_dir: Path, id: str, file: str) -> None:
    path = seq_dir / file
    payload, urls = payload_of(engine, seq_query(id), seq_dir)
    assert payload == path.read_bytes()
    assert len(urls) == 1
    assert engine.ticket(seq_query(id)).md5 == hashlib.md5(payload).hexdigest()


def test_errors(engine: Htsget) -> None:
    with pytest.raises(NotFound):
        engine.ticket(seq_query("genome", [Region("chrZ")]))
    with pytest.raises(NotFound):
        engine.ticket(seq_query("absent"))
    with pytest.raises(NotFound):  # no .fai
        engine.ticket(seq_query("noindex", [Region("chr1", 0, 10)]))
    with pytest.raises(InvalidRange):
        engine.ticket(seq_query("genome", [Region("chrM", 123, 200)]))
    with pytest.raises(InvalidRange):
        engine.ticket(seq_query("zipped", [Region("chrM", 500)]))
    with pytest.raises(InvalidInput):  # gzip but not BGZF
        engine.ticket(seq_query("plaingz", [Region("chr1", 0, 10)]))
    with pytest.raises(InvalidInput):
        engine.ticket(seq_query("genome", klass=Class.HEADER))
    with pytest.raises(NotFound):  # "*" (unplaced reads) names no sequence
        engine.ticket(parse_get(Endpoint.SEQUENCES, "genome", {"referenceName": "*"}))


def test_fai_lookup() -> None:
    fai = Fai(b"a\t10\t3\t5\t6\nab\t4\t20\t4\t5\nb c\t1\t30\t1\t2\n")
    assert fai.get("a") is not None and fai.get("a").length == 10  # type: ignore[union-attr]
    assert fai.get("ab").offset == 20  # type: ignore[union-attr]
    assert fai.get("b c").offset == 30  # type: ignore[union-attr]
    assert fai.get("b") is None and fai.get("") is None
    entry = fai.get("a")
    assert entry is not None and entry.span(0, 10) == (3, 14) and entry.span(5, 6) == (9, 10)


# --------------------------------------------------------------------------- FASTQ


@pytest.mark.parametrize("id,file", [("reads", "reads.fq"), ("zreads", "zreads.fastq.gz")])
def test_fastq_whole_file(engine: Htsget, seq_dir: Path, id: str, file: str) -> None:
    payload, _ = payload_of(engine, seq_query(id, fmt=Format.FASTQ), seq_dir)
    assert payload == (seq_dir / file).read_bytes()


@pytest.mark.parametrize("id,file", [("reads", "reads.fq"), ("zreads", "zreads.fastq.gz"),
                                     ("nonl", "nonl.fq")])
def test_fastq_single_reads(engine: Htsget, seq_dir: Path, id: str, file: str) -> None:
    original = (seq_dir / "reads.fq").read_text()
    lines = original.splitlines()
    for i in [0, 1, 2, 3, 17, 500, 1998, 1999]:
        payload, _ = payload_of(engine, seq_query(id, [Region(f"read{i}")], Format.FASTQ),
                                seq_dir)
        text = text_of(payload)
        assert text == "\n".join(lines[4 * i : 4 * i + 4]) + "\n"  # the record, byte for byte
        fq = fastq_records(run("samtools", "fqidx", str(seq_dir / file), f"read{i}"))
        assert fastq_records(text) == fq


def test_fastq_reads_across_block_boundaries(engine: Htsget, seq_dir: Path) -> None:
    """Every read whose record (name line included) straddles a BGZF block boundary."""
    blocks = load_block_map_for(seq_dir / "zreads.fastq.gz")
    lines = (seq_dir / "reads.fq").read_text().splitlines(keepends=True)
    starts, pos = [], 0
    for i in range(0, len(lines), 4):
        starts.append(pos)
        pos += sum(len(line) for line in lines[i : i + 4])
    starts.append(pos)
    boundaries = set(blocks.uoffsets[1:-1])
    crossing = [i for i in range(len(starts) - 1)
                if any(starts[i] < b < starts[i + 1] for b in boundaries)]
    assert len(crossing) >= 3
    for i in crossing:
        query = seq_query("zreads", [Region(f"read{i}")], Format.FASTQ)
        payload, _ = payload_of(engine, query, seq_dir)
        assert text_of(payload) == "".join(lines[4 * i : 4 * i + 4])


def test_fastq_subsequences_and_several_reads(engine: Htsget, seq_dir: Path) -> None:
    for id, file in [("reads", "reads.fq"), ("zreads", "zreads.fastq.gz")]:
        regions = [Region("read7", 3, 15), Region("read1200"), Region("read7", 0, 1)]
        payload, _ = payload_of(engine, seq_query(id, regions, Format.FASTQ), seq_dir)
        expected = fastq_records(run("samtools", "fqidx", str(seq_dir / file),
                                     "read7:4-15", "read1200", "read7:1-1"))
        assert fastq_records(text_of(payload)) == expected
    with pytest.raises(NotFound):
        engine.ticket(seq_query("reads", [Region("read99999")], Format.FASTQ))


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def seq_server(seq_dir: Path) -> Iterator[Server]:
    yield from serve_dir(seq_dir)


def test_e2e_sequences(seq_server: Server, seq_dir: Path) -> None:
    url = f"{seq_server.url}/sequences"
    params: dict[str, Any] = {"referenceName": "chr2", "start": 1234, "end": 98_765}
    resp = requests.get(f"{url}/genome", params=params, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json()["htsget"]["format"] == "FASTA"
    got = fasta_records(text_of(reassemble(resp.json())))
    assert got == faidx(seq_dir / "genome.fa", "chr2:1235-98765")

    body: dict[str, Any] = {"format": "fasta", "regions": [
        {"referenceName": "chr1", "start": 7, "end": 200_000},
        {"referenceName": "chrM"},
    ]}
    resp = requests.post(f"{url}/zipped", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    got = fasta_records(text_of(reassemble(resp.json())))
    assert got == faidx(seq_dir / "zipped.fa.gz", "chr1:8-200000", "chrM")

    resp = requests.get(f"{url}/zreads", params={"format": "FASTQ", "referenceName": "read42"},
                        timeout=30)
    assert resp.status_code == 200, resp.text
    assert fastq_records(text_of(reassemble(resp.json()))) == fastq_records(
        run("samtools", "fqidx", str(seq_dir / "reads.fq"), "read42"))

    resp = requests.get(f"{url}/reads", params={"format": "FASTQ"}, timeout=30)
    assert reassemble(resp.json()) == (seq_dir / "reads.fq").read_bytes()
    digest = hashlib.md5((seq_dir / "reads.fq").read_bytes()).hexdigest()
    assert resp.json()["htsget"]["md5"] == digest

    resp = requests.get(f"{url}/genome", params={"referenceName": "nope"}, timeout=30)
    assert resp.status_code == 404 and resp.json()["htsget"]["error"] == "NotFound"
    params = {"referenceName": "chrM", "start": 500}
    resp = requests.get(f"{url}/genome", params=params, timeout=30)
    assert resp.status_code == 400 and resp.json()["htsget"]["error"] == "InvalidRange"
    resp = requests.get(f"{url}/service-info", timeout=30)
    assert resp.status_code == 200
