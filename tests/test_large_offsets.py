"""Files past 4 GiB: a whole-genome BAM or CRAM is 50-150 GB, so its records sit at
compressed offsets that need more than 32 bits (BGZF virtual offsets keep 48 for them).
Every offset the server reads, compares, writes into a Range header or a derived path must
survive that, as must htslib reading the ticket.

Each file here is a small real file (samtools, bcftools), re-blocked so that its second
reference starts a BGZF block (CRAM: a container), with a 4 GiB + hole inserted there and
its index (BAI, TBI, CSI, CRAI) rewritten with every offset past the hole moved by the
hole's size. The hole is sparse: no disk, and nothing may read it: the walks of the first
reference's regions stop where its data ends, as htslib's do, and the others' start past it
at index offsets (on a real file those bytes are the next reference's first records, never
the first reference's). htslib reads the same
sparse file through the rewritten index, so the comparison stands: every region's
reassembled ticket holds exactly htslib's records, through a real gunicorn, and samtools /
bcftools read the ticket urls themselves.
"""

from __future__ import annotations

import gzip
import random
import struct
import subprocess
from pathlib import Path
from typing import Callable, Iterator, Optional

import pysam
import pytest
import requests
from conftest import (
    BGZF_EOF_MARKER,
    Server,
    assert_records,
    assert_ticket_records,
    free_port,
    htslib_records,
    make_bam,
    make_vcf,
    reassemble,
)
from test_corrupt_indexes import crai_lines, write_crai

#: the hole: past 4 GiB, and odd, so that no offset past it is a round number by chance
HOLE = (1 << 32) + 0x12345
#: the gap between two CRAM containers in test_a_cram_container_is_read_by_its_own_length
GAP = 16 << 20
BGZF_EOF = BGZF_EOF_MARKER
BAI_PSEUDO_BIN = 37450

Shift = Callable[..., int]


def _voffset_shift(split: int) -> Shift:
    """Moves a virtual offset at or past `split` by the hole, but for an end at exactly
    `split`: the end of the data before the hole (a reference's last chunk, read up to the
    hole and no further), where a start there is the first record after it."""
    def shift(v: int, end: bool = False) -> int:
        moved = v > split << 16 if end else v >= split << 16
        return v + (HOLE << 16) if moved else v
    return shift


def _rewrite_bins(data: bytes, pos: int, out: bytearray, shift: Shift, pseudo: int,
                  loffset: bool) -> int:
    """One reference's bins (BAI/TBI layout; CSI's with `loffset`), offsets shifted."""
    (n_bin,) = struct.unpack_from("<i", data, pos)
    out += data[pos:pos + 4]
    pos += 4
    for _ in range(n_bin):
        (bin_,) = struct.unpack_from("<I", data, pos)
        out += data[pos:pos + 4]
        pos += 4
        if loffset:
            (lo,) = struct.unpack_from("<Q", data, pos)
            out += struct.pack("<Q", shift(lo))
            pos += 8
        (n_chunk,) = struct.unpack_from("<i", data, pos)
        out += data[pos:pos + 4]
        pos += 4
        for k in range(n_chunk):
            beg, end = struct.unpack_from("<QQ", data, pos)
            if bin_ == pseudo and k == 1:  # mapped / unmapped read counts
                out += data[pos:pos + 16]
            else:
                out += struct.pack("<QQ", shift(beg), shift(end, True))
            pos += 16
    return pos


def _rewrite_linear(data: bytes, pos: int, out: bytearray, shift: Shift) -> int:
    (n_intv,) = struct.unpack_from("<i", data, pos)
    out += data[pos:pos + 4]
    pos += 4
    for _ in range(n_intv):
        (v,) = struct.unpack_from("<Q", data, pos)
        out += struct.pack("<Q", shift(v) if v else 0)
        pos += 8
    return pos


def shift_bai(data: bytes, shift: Shift) -> bytes:
    assert data[:4] == b"BAI\x01"
    out = bytearray(data[:8])
    (n_ref,) = struct.unpack_from("<i", data, 4)
    pos = 8
    for _ in range(n_ref):
        pos = _rewrite_bins(data, pos, out, shift, BAI_PSEUDO_BIN, loffset=False)
        pos = _rewrite_linear(data, pos, out, shift)
    out += data[pos:]  # n_no_coor
    return bytes(out)


def shift_tbi(data: bytes, shift: Shift) -> bytes:
    assert data[:4] == b"TBI\x01"
    (n_ref,) = struct.unpack_from("<i", data, 4)
    (l_nm,) = struct.unpack_from("<i", data, 32)
    pos = 36 + l_nm
    out = bytearray(data[:pos])
    for _ in range(n_ref):
        pos = _rewrite_bins(data, pos, out, shift, BAI_PSEUDO_BIN, loffset=False)
        pos = _rewrite_linear(data, pos, out, shift)
    out += data[pos:]
    return bytes(out)


def shift_csi(data: bytes, shift: Shift) -> bytes:
    assert data[:4] == b"CSI\x01"
    _, depth, l_aux = struct.unpack_from("<iii", data, 4)
    pos = 16 + l_aux
    (n_ref,) = struct.unpack_from("<i", data, pos)
    pos += 4
    out = bytearray(data[:pos])
    pseudo = ((1 << ((depth + 1) * 3)) - 1) // 7 + 1
    for _ in range(n_ref):
        pos = _rewrite_bins(data, pos, out, shift, pseudo, loffset=True)
    out += data[pos:]
    return bytes(out)


def _bgzip(data: bytes) -> bytes:
    return subprocess.run(["bgzip", "-c"], input=data, capture_output=True, check=True).stdout


def _second_reference_starts(plain: bytes, kind: str) -> int:
    """Where, in the inflated stream, the first record of the second reference begins."""
    if kind == "vcf":
        pos, first = 0, None
        while True:
            end = plain.index(b"\n", pos) + 1
            if not plain.startswith(b"#", pos):
                chrom = plain[pos:plain.index(b"\t", pos)]
                if first is None:
                    first = chrom
                elif chrom != first:
                    return pos
            pos = end
    if kind == "bam":
        (l_text,) = struct.unpack_from("<i", plain, 4)
        pos = 8 + l_text
        (n_ref,) = struct.unpack_from("<i", plain, pos)
        pos += 4
        for _ in range(n_ref):
            (l_name,) = struct.unpack_from("<i", plain, pos)
            pos += 8 + l_name
        step, at = 4, 4  # block_size counts the bytes after it; refID follows it
    else:  # BCF: l_shared and l_indiv count the bytes after them; CHROM follows them
        (l_text,) = struct.unpack_from("<I", plain, 5)
        pos, step, at = 9 + l_text, 8, 8
    first_ref = None
    while True:
        if kind == "bam":
            (size,) = struct.unpack_from("<i", plain, pos)
        else:
            size = sum(struct.unpack_from("<II", plain, pos))
        (ref,) = struct.unpack_from("<i", plain, pos + at)
        if first_ref is None:
            first_ref = ref
        elif ref != first_ref:
            return pos
        pos += step + size


def holed_bgzf(src: Path, dst: Path, kind: str, index: list[str]) -> int:
    """`src` (BAM, VCF.gz, BCF) at `dst`, its second reference starting a BGZF block of its
    own past the hole, indexed by `index` (the command, without the file) and the index's
    offsets past the hole moved by it; returns where the hole starts."""
    plain = gzip.decompress(src.read_bytes())
    cut = _second_reference_starts(plain, kind)
    first = _bgzip(plain[:cut])
    assert first.endswith(BGZF_EOF)
    split = len(first) - len(BGZF_EOF)
    reblocked = dst.parent / ("reblocked-" + dst.name)
    reblocked.write_bytes(first[:split] + _bgzip(plain[cut:]))
    subprocess.run([*index, str(reblocked)], check=True)
    ext = {"samtools": "bai", "bcftools": "tbi" if "--tbi" in index else "csi"}[index[0]]
    raw = (reblocked.parent / f"{reblocked.name}.{ext}").read_bytes()
    plain_index = gzip.decompress(raw) if ext != "bai" else raw
    rewrite = {"bai": shift_bai, "tbi": shift_tbi, "csi": shift_csi}[ext]
    starts: list[int] = []
    rewrite(plain_index, lambda v, end=False: v if end else starts.append(v) or v)
    assert split << 16 in starts  # the second reference's first record starts the block
    _holed_copy(reblocked, dst, split)
    shifted = rewrite(plain_index, _voffset_shift(split))
    (dst.parent / f"{dst.name}.{ext}").write_bytes(shifted if ext == "bai" else _bgzip(shifted))
    reblocked.unlink()
    return split


def _holed_copy(src: Path, dst: Path, split: int, hole: int = HOLE) -> None:
    """`src` with `hole` sparse bytes inserted at byte `split`."""
    data = src.read_bytes()
    with open(dst, "wb") as f:
        f.write(data[:split])
        f.seek(split + hole)
        f.write(data[split:])


def holed_cram(src: Path, dst: Path, hole: int = HOLE) -> int:
    """`src` CRAM at `dst` with `hole` bytes before the first container of its second
    reference (containers hold one reference each here), its CRAI shifted."""
    lines = crai_lines(src.parent / (src.name + ".crai"))
    first_ref = min(f[0] for f in lines if f[0] >= 0)
    split = min(f[3] for f in lines if f[0] > first_ref)
    assert all(f[3] < split for f in lines if f[0] == first_ref)
    _holed_copy(src, dst, split, hole)
    write_crai(dst.parent / (dst.name + ".crai"),
               [f[:3] + [f[3] + hole if f[3] >= split else f[3]] + f[4:] for f in lines])
    return split


# --------------------------------------------------------------------------- fixture


FILES = {"reads": ("big.bam", "big.cram"), "variants": ("big.vcf.gz", "big.bcf", "bigcsi.bcf")}


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("small")
    d = tmp_path_factory.mktemp("big")
    probe = d / "probe"
    with open(probe, "wb") as f:
        f.seek(64 << 20)
        f.write(b"x")
    if probe.stat().st_blocks * 512 > 1 << 20:  # a hole written out: 4 GiB per file
        pytest.skip("the temporary directory's filesystem does not keep sparse files")
    probe.unlink()
    refs = [("chr1", 400_000), ("chr2", 300_000), ("chr3", 200_000)]
    bam = make_bam(src / "s.bam", seed=31, refs=refs, n_reads=6000)
    holed_bgzf(bam, d / "big.bam", "bam", ["samtools", "index"])
    # htslib finds the unplaced reads, and orders CRAM records, by reading the file through
    # (conftest.htslib_records), which the hole stops: the same records without it
    (d / "original").mkdir()
    (d / "original" / "big.bam").write_bytes(bam.read_bytes())
    cram = src / "s.cram"
    subprocess.run(["samtools", "view", "-C", "--output-fmt-option", "no_ref=1",
                    "--output-fmt-option", "seqs_per_slice=500", "-o", str(cram), str(bam)],
                   check=True)
    subprocess.run(["samtools", "index", str(cram)], check=True)
    holed_cram(cram, d / "big.cram")
    for suffix in ("", ".crai"):
        (d / "original" / f"big.cram{suffix}").write_bytes(Path(f"{cram}{suffix}").read_bytes())
    # bytes between two containers that no index line names (GAP: a test reads them if
    # the server does, in a second), after the last container of the first reference
    (d / "gap").mkdir()
    holed_cram(cram, d / "gap" / "big.cram", GAP)
    vcf = make_vcf(src / "v.vcf.gz", seed=32, n=6000)
    bcf = src / "v.bcf"
    subprocess.run(["bcftools", "view", "-Ob", "-o", str(bcf), str(vcf)], check=True)
    holed_bgzf(vcf, d / "big.vcf.gz", "vcf", ["bcftools", "index", "--tbi"])
    holed_bgzf(bcf, d / "big.bcf", "bcf", ["bcftools", "index", "--csi"])
    # a finer CSI (more levels, more bins, loffsets all over)
    holed_bgzf(bcf, d / "bigcsi.bcf", "bcf", ["bcftools", "index", "--csi", "-m", "10"])
    return d


@pytest.fixture(scope="module", params=["inline", "derived"])
def big_server(request: pytest.FixtureRequest, big_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default configuration (re-cut edges inline), and a small inline bound, so that
    re-cuts go out as derived /data blocks, whose paths carry the offsets too."""
    conf = tmp_path_factory.mktemp("conf") / "htsgetr.toml"
    bound = "max_inline_bytes = 3000\n" if request.param == "derived" else ""
    conf.write_text(f'{bound}[[locations]]\nroot = "{big_dir}"\n')
    port = free_port()
    srv = Server(["--config", str(conf), "--port", str(port), "--workers", "2"], port).start()
    srv.derived = request.param == "derived"  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def _regions(path: Path, n: int, seed: int) -> list[tuple[str, Optional[int], Optional[int]]]:
    """Random regions of every reference (with reads: `*` too). The first reference's data
    ends at the hole: a walk to its end must stop there, as htslib's does (the bytes after
    a reference's data are another reference's records, never its own)."""
    if path.suffix in (".bam", ".cram"):
        with pysam.AlignmentFile(str(path)) as f:
            refs = list(zip(f.references, f.lengths)) + [("*", 0)]
    else:
        with pysam.VariantFile(str(path)) as f:
            refs = [(c, f.header.contigs[c].length) for c in f.header.contigs]
    rng = random.Random(seed)
    out: list[tuple[str, Optional[int], Optional[int]]] = []
    for _ in range(n):
        name, length = rng.choice(refs)
        if name == "*" or rng.random() < 0.15:
            out.append((name, None, None))
            continue
        start = rng.randrange(length)
        out.append((name, start, start + rng.choice([1, 500, 5000, 60_000])))
    return out


def _ticket(server: Server, endpoint: str, id: str, fmt: str,
            region: tuple[str, Optional[int], Optional[int]]) -> dict:
    name, start, end = region
    params: dict[str, object] = {"referenceName": name, "format": fmt}
    if start is not None:
        params.update(start=start, end=end)
    resp = requests.get(f"{server.url}/{endpoint}/{id}", params=params, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _range_starts(ticket: dict) -> list[int]:
    return [int(u["headers"]["Range"].split("=")[1].split("-")[0])
            for u in ticket["htsget"]["urls"] if "Range" in u.get("headers", {})]


def _reference(path: Path, region: tuple[str, Optional[int], Optional[int]]) -> Path:
    """The file htslib's records are read from: the holed file itself, through its rewritten
    index; for CRAM, and for the unplaced reads, the same file without the hole."""
    if path.suffix == ".cram" or region[0] == "*":
        return path.parent / "original" / path.name
    return path


FORMAT = {".bam": "BAM", ".cram": "CRAM", ".gz": "VCF", ".bcf": "BCF"}


@pytest.mark.parametrize("endpoint,name", [(e, n) for e, names in FILES.items() for n in names])
def test_regions_past_4_gib_are_exactly_htslibs(big_server: Server, big_dir: Path,
                                                tmp_path: Path, endpoint: str, name: str) -> None:
    path = big_dir / name
    assert path.stat().st_size > HOLE and path.stat().st_blocks * 512 < HOLE // 100  # sparse
    id = name.split(".")[0]
    fmt = FORMAT[path.suffix]
    past = derived = 0
    for region in _regions(path, 25, seed=len(name)):
        t = _ticket(big_server, endpoint, id, fmt, region)
        past += sum(start > (1 << 32) for start in _range_starts(t))
        derived += sum("/data/~~" in u["url"] for u in t["htsget"]["urls"])
        assert_ticket_records(reassemble(t), tmp_path, _reference(path, region), [region])
    assert past > 0  # the ticket urls did name bytes past 4 GiB
    assert (derived > 0) == big_server.derived  # type: ignore[attr-defined]


def test_a_header_ticket_stops_before_the_hole(big_server: Server, big_dir: Path,
                                               tmp_path: Path) -> None:
    for endpoint, name in [("reads", "big.bam"), ("reads", "big.cram"),
                           ("variants", "big.vcf.gz"), ("variants", "big.bcf")]:
        path = big_dir / name
        resp = requests.get(f"{big_server.url}/{endpoint}/{name.split('.')[0]}",
                            params={"class": "header", "format": FORMAT[path.suffix]},
                            timeout=60)
        assert resp.status_code == 200, resp.text
        payload = reassemble(resp.json())
        assert len(payload) < 1 << 20
        assert assert_ticket_records(payload, tmp_path, _reference(path, ("", 0, 0)), []) == []


def test_whole_file_ticket_names_every_byte_once(big_server: Server, big_dir: Path) -> None:
    """A whole-file ticket of a file past 4 GiB: after the header (re-cut inline where it
    shares a block with records) its ranges run on without a gap or an overlap to the end
    of the file's data (read here only as numbers: the hole is not data)."""
    for endpoint, name in [("reads", "big.bam"), ("variants", "big.vcf.gz")]:
        path = big_dir / name
        resp = requests.get(f"{big_server.url}/{endpoint}/{name.split('.')[0]}", timeout=60)
        assert resp.status_code == 200, resp.text
        ranges = [tuple(map(int, u["headers"]["Range"].split("=")[1].split("-")))
                  for u in resp.json()["htsget"]["urls"] if "Range" in u.get("headers", {})]
        assert ranges and ranges[0][0] < 1 << 20
        for (_, last), (first, _) in zip(ranges, ranges[1:]):
            assert first == last + 1
        assert ranges[-1][1] + 1 in (path.stat().st_size, path.stat().st_size - len(BGZF_EOF))


def test_data_ranges_past_4_gib(big_server: Server, big_dir: Path) -> None:
    """/data serves a range past 4 GiB byte for byte, and says so in Content-Range."""
    path = big_dir / "big.bam"
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(size - 5000)
        want = f.read(4000)
    resp = requests.get(f"{big_server.url}/data/big.bam",
                        headers={"Range": f"bytes={size - 5000}-{size - 1001}"}, timeout=60)
    assert resp.status_code == 206
    assert resp.headers["Content-Range"] == f"bytes {size - 5000}-{size - 1001}/{size}"
    assert resp.content == want


@pytest.mark.parametrize("tool,endpoint,name", [
    ("samtools", "reads", "big.bam"), ("samtools", "reads", "big.cram"),
    ("bcftools", "variants", "big.vcf.gz"), ("bcftools", "variants", "big.bcf")])
def test_htslib_reads_the_ticket_url(big_server: Server, big_dir: Path, tool: str,
                                     endpoint: str, name: str) -> None:
    path = big_dir / name
    region, want = next((r, w) for r in _regions(path, 40, seed=99) if r[0] != "*"
                        for w in [[x.rstrip("\n") for x in htslib_records(_reference(path, r),
                                                                          [r])]] if w)
    ref, start, end = region
    query = f"referenceName={ref}&format={FORMAT[path.suffix]}"
    if start is not None:
        query += f"&start={start}&end={end}"
    url = f"{big_server.url}/{endpoint}/{name.split('.')[0]}?{query}"
    args = [tool, "view", url] if tool == "samtools" else [tool, "view", "-H", url]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = [line for line in out.stdout.splitlines() if line]
    assert_records(got, want, f"{tool} view of the ticket url")


def test_a_cram_container_is_read_by_its_own_length(big_dir: Path, tmp_path: Path) -> None:
    """A container ends where its header says (CRAMv3: its length), not where the index's
    next container starts: with bytes between them, a region at the end of the first
    reference re-encodes its last container alone and sends no byte of the gap. (Measured
    by where it ends, as that is where a read from the next container's start went: 4 GiB
    of zeros read, and counted as containers, for one ticket.)"""
    import base64
    import tracemalloc

    from htsgetr.config import for_data_dir
    from htsgetr.engine import Htsget
    from htsgetr.protocol import Endpoint, parse_get

    gap_dir = big_dir / "gap"
    original = big_dir / "original" / "big.cram"
    with pysam.AlignmentFile(str(original)) as f:
        name, length = f.references[0], f.lengths[0]
        last = max(r.reference_end or 0 for r in f.fetch(name))
    engine = Htsget(for_data_dir(str(gap_dir)))
    data = (gap_dir / "big.cram").read_bytes()
    for start, end in [(last - 2000, length), (0, length), (last - 30_000, last - 25_000)]:
        region = (name, start, end)
        tracemalloc.start()
        try:
            ticket = engine.ticket(parse_get(Endpoint.READS, "big", {
                "referenceName": name, "start": str(start), "end": str(end), "format": "CRAM"}))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < GAP // 2, peak
        payload = b""
        for block in ticket.to_json()["htsget"]["urls"]:
            url = block["url"]
            if url.startswith("data:"):
                payload += base64.b64decode(url[len("data:;base64,"):])
                continue
            first, last_byte = map(int, block["headers"]["Range"].split("=")[1].split("-"))
            payload += data[first:last_byte + 1]
        assert b"\0" * 4096 not in payload
        assert_ticket_records(payload, tmp_path, original, [region])
