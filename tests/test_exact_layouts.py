"""Record-exact tickets on BGZF layouts other writers leave: empty blocks between data blocks
(a BGZF reader skips them; an index's virtual offset may name one), no EOF marker at the end,
stored (level 0) blocks, and a VCF made by concatenating bgzipped parts (an EOF marker after
each part). The whole record list of random single and multi-region tickets, and of the
whole file, must equal htslib's (pysam) for the original file: from local disk, from S3
(moto's server, presigned urls) and from an HTTP store (nginx, redirect urls), each read
through its own code for block ends and read-ahead.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pysam
import pytest
from conftest import fetch_block
from test_exact import Case, make_reads, make_variants, payload, rechunk
from test_s3 import AWS_ENV, BUCKET, MotoServer, upload_tree
from test_url import Nginx

from htsgetr import Htsget, Query, Region
from htsgetr.config import Config, LocationConfig, for_data_dir
from htsgetr.formats import bgzf
from htsgetr.protocol import Format

#: the key prefix of the layouts in moto's bucket
PREFIX = "layouts"


def blocks_of(path: Path) -> list[bytes]:
    raw, out, pos = path.read_bytes(), [], 0
    while pos < len(raw):
        size = bgzf.block_size(raw[pos:pos + bgzf.HEADER_SIZE])
        out.append(raw[pos:pos + size])
        pos += size
    return out


def with_empty_blocks(path: Path, seed: int, share: float, keep_eof: bool = True) -> int:
    """Put an empty BGZF block (the EOF marker's bytes) after a `share` of the data blocks,
    and drop the closing one unless `keep_eof`. Returns how many went in."""
    rng = random.Random(seed)
    blocks, out, added = blocks_of(path), [], 0
    assert blocks[-1] == bgzf.EOF_MARKER
    for block in blocks[:-1]:
        out.append(block)
        if rng.random() < share:
            out.append(bgzf.EOF_MARKER)
            added += 1
    if keep_eof:
        out.append(blocks[-1])
    path.write_bytes(b"".join(out))
    return added


def concatenated_vcf(root: Path, seed: int) -> Path:
    """A VCF bgzipped in six parts, concatenated (as `cat a.vcf.gz b.vcf.gz` makes one)."""
    plain = make_variants(root / "parts.vcf", seed=seed)
    lines = plain.read_text().splitlines(keepends=True)
    head = [x for x in lines if x.startswith("#")]
    body = [x for x in lines if not x.startswith("#")]
    cuts = sorted(random.Random(seed).sample(range(1, len(body)), 5))
    parts = [head + body[:cuts[0]]] + [body[a:b] for a, b in zip(cuts, cuts[1:] + [len(body)])]
    blob = b""
    for i, part in enumerate(parts):
        piece = root / f"part{i}.vcf"
        piece.write_text("".join(part))
        subprocess.run(["bgzip", "-f", str(piece)], check=True)
        blob += piece.with_suffix(".vcf.gz").read_bytes()
        piece.with_suffix(".vcf.gz").unlink()
    plain.unlink()
    out = root / "parts.vcf.gz"
    out.write_bytes(blob)
    assert blob.count(bgzf.EOF_MARKER) == 6
    return out


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layouts")
    make_reads(root / "empty_blocks.bam", seed=41)
    rechunk(root / "empty_blocks.bam", seed=7)
    assert with_empty_blocks(root / "empty_blocks.bam", 1, 0.2) > 50
    pysam.index(str(root / "empty_blocks.bam"))
    make_reads(root / "level0.bam", seed=42)
    subprocess.run(["samtools", "view", "-b", "--output-fmt-option", "level=0", "-o",
                    str(root / "stored.bam"), str(root / "level0.bam")], check=True)
    (root / "level0.bam").unlink()
    pysam.index(str(root / "stored.bam"))
    make_reads(root / "no_eof.bam", seed=43)
    rechunk(root / "no_eof.bam", seed=8)
    with_empty_blocks(root / "no_eof.bam", 2, 0.2, keep_eof=False)
    pysam.index(str(root / "no_eof.bam"))
    pysam.tabix_index(str(concatenated_vcf(root, 44)), preset="vcf", force=True)
    plain = make_variants(root / "v_empty.vcf", seed=45)
    pysam.tabix_index(str(plain), preset="vcf", csi=True)
    rechunk(root / "v_empty.vcf.gz", seed=9, smallest=30, largest=3000)
    assert with_empty_blocks(root / "v_empty.vcf.gz", 4, 0.3) > 50
    (root / "v_empty.vcf.gz.csi").unlink()
    pysam.tabix_index(str(root / "v_empty.vcf.gz"), preset="vcf", csi=True, force=True)
    subprocess.run(["bcftools", "view", "-Ob", "-o", str(root / "b_empty.bcf"),
                    str(root / "v_empty.vcf.gz")], check=True)
    rechunk(root / "b_empty.bcf", seed=10, smallest=100, largest=5000)
    assert with_empty_blocks(root / "b_empty.bcf", 5, 0.3) > 20
    subprocess.run(["bcftools", "index", "-f", str(root / "b_empty.bcf")], check=True)
    return root


class TruncatedCase(Case):
    """A `Case` whose BAM may lack its EOF marker (pysam refuses that unless told)."""

    def open(self, path: Path) -> Any:
        if self.reads:
            return pysam.AlignmentFile(str(path), check_sq=False, ignore_truncation=True)
        return pysam.VariantFile(str(path))


def remote_payload(engine: Htsget, query: Query, store: str) -> bytes:
    """The ticket reassembled as a client would, its byte ranges fetched from the store
    they name (`store`: the urls' start: presigned S3, the HTTP store); a derived block from
    the engine itself."""
    out = []
    for block in engine.ticket(query).to_json()["htsget"]["urls"]:
        url = block["url"]
        path = url.split("/data/", 1)[-1]
        if path.startswith("~~"):
            out.append(engine.derived(path))
            continue
        assert url.startswith(("data:", store)), url
        out.append(fetch_block(block))
    return b"".join(out)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory, layouts: Path) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    upload_tree(server.client(), layouts, BUCKET, PREFIX)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory, layouts: Path) -> Iterator[Nginx]:
    server = Nginx(tmp_path_factory.mktemp("nginx"), layouts)
    yield server
    server.stop()


Backend = Callable[[Query], bytes]


@pytest.fixture(params=["local", "s3", "url"])
def backend(request: pytest.FixtureRequest, layouts: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Backend:
    """How a ticket's payload is had from each storage backend."""
    if request.param == "local":
        engine = Htsget(for_data_dir(str(layouts)))
        return lambda query: payload(engine, layouts, query)
    if request.param == "s3":
        for name, value in AWS_ENV.items():
            monkeypatch.setenv(name, value)
        moto: MotoServer = request.getfixturevalue("moto")
        location = LocationConfig(backend="s3", bucket=BUCKET, prefix=PREFIX,
                                  endpoint_url=moto.url, path_style=True)
        store = f"{moto.url}/{BUCKET}/{PREFIX}/"
    else:
        nginx: Nginx = request.getfixturevalue("nginx")
        location = LocationConfig(backend="url", url=nginx.url + "/files/")
        store = location.url or ""
    engine = Htsget(Config(locations=[location]))
    return lambda query: remote_payload(engine, query, store)


LAYOUTS = [("empty_blocks.bam", Format.BAM), ("stored.bam", Format.BAM),
           ("no_eof.bam", Format.BAM), ("parts.vcf.gz", Format.VCF),
           ("v_empty.vcf.gz", Format.VCF), ("b_empty.bcf", Format.BCF)]


@pytest.mark.filterwarnings("ignore:no BGZF EOF marker")
@pytest.mark.parametrize("name,fmt", LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_exact_on_other_writers_layouts(layouts: Path, backend: Backend, tmp_path: Path,
                                        name: str, fmt: Format) -> None:
    case = TruncatedCase(layouts, name, fmt)

    def got(regions: Optional[tuple[Region, ...]]) -> list[str]:
        records, header = case.read(
            backend(Query(case.endpoint, case.id, fmt, regions=regions)), tmp_path)
        assert header == case.header
        return records

    assert got(None) == case.all
    rng = random.Random(sum(map(ord, name)))
    for i in range(40):
        regions = tuple(case.random_region(rng) for _ in range(1 if i < 28 else 3))
        assert got(regions) == case.expected(regions), regions
    if case.reads:  # referenceName=*: the unplaced reads after the last placed one
        with case.open(case.path) as f:
            unplaced = [r.to_string() for r in f.fetch(until_eof=True) if r.reference_id < 0]
        assert len(unplaced) > 50
        assert got((Region("*"),)) == unplaced
        for _ in range(5):
            regions = (case.random_region(rng), Region("*"))
            assert got(regions) == case.expected(regions[:1]) + unplaced, regions
