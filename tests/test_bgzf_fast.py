"""The fast BGZF path: ISA-L inflate/deflate against zlib (and htslib reading what we write),
kept open files invalidated when the file changes, the block cache's byte budget."""

from __future__ import annotations

import base64
import os
import random
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pysam
import pytest
from conftest import make_bam, make_vcf

from htsgetr import Htsget, Query, Region
from htsgetr.cache import ENTRY_OVERHEAD, BlockCache
from htsgetr.config import for_data_dir
from htsgetr.formats import bgzf
from htsgetr.protocol import Endpoint, Format, NotFound
from htsgetr.storage import local
from htsgetr.storage.local import LocalStorage

fast = pytest.mark.skipif(bgzf.CODEC.name == "zlib", reason="neither isal nor deflate is installed")


@pytest.fixture(params=["isal+libdeflate", "libdeflate", "zlib"])
def codec(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test with every codec: the default (ISA-L inflate and deflate, libdeflate CRC32),
    libdeflate alone, and the pure zlib fallback (when their packages are installed)."""
    if request.param not in bgzf.codecs():
        pytest.skip(f"{request.param} is not installed")
    previous = bgzf.use_codec(request.param)
    yield request.param
    bgzf.use_codec(previous.name)


def split_blocks(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        size = bgzf.block_size(data[pos : pos + 64])
        out.append(data[pos : pos + size])
        pos += size
    return out


def zlib_inflate(block: bytes) -> bytes:
    xlen = struct.unpack_from("<H", block, 10)[0]
    return zlib.decompress(block[12 + xlen : -8], -15)


def samples() -> list[bytes]:
    rng = random.Random(12)
    text = "".join(rng.choice(["chr1\t", "12345\t", "A\tG\t", "PASS\n", "0/1:35\t"])
                   for _ in range(20000)).encode()
    return [
        b"",
        b"x",
        os.urandom(1000),
        os.urandom(bgzf.MAX_BLOCK_DATA),  # incompressible: stored blocks, still < 64 KiB
        os.urandom(3 * bgzf.MAX_BLOCK_DATA + 17),  # several blocks
        text,
        bytes(200_000),
    ]


@pytest.mark.parametrize("index", range(7))
def test_round_trip_and_equal_to_zlib(codec: str, index: int) -> None:
    data = samples()[index]
    blob = bgzf.compress_block(data)
    blocks = split_blocks(blob)
    assert len(blocks) == -(-len(data) // bgzf.MAX_BLOCK_DATA)
    out = b""
    for block in blocks:
        assert len(block) <= 0x10000
        crc, isize = struct.unpack_from("<II", block, len(block) - 8)
        payload = zlib_inflate(block)  # what zlib makes of our block ...
        assert isize == len(payload) and crc == zlib.crc32(payload)
        assert bgzf.decompress_block(block) == payload  # ... is what we make of it
        out += payload
    assert out == data


@fast
def test_every_codec_inflates_real_files_alike(tmp_path: Path) -> None:
    bam = make_bam(tmp_path / "a.bam", n_reads=4000)
    vcf = make_vcf(tmp_path / "a.vcf.gz", n=4000)
    for path in (bam, vcf):
        blocks = split_blocks(path.read_bytes())
        assert len(blocks) > 3 and blocks[-1] == bgzf.EOF_MARKER
        want = [zlib_inflate(b) for b in blocks]
        for name in bgzf.codecs():
            previous = bgzf.use_codec(name)
            try:
                assert [bgzf.decompress_block(b) for b in blocks] == want, name
            finally:
                bgzf.use_codec(previous.name)


def test_htslib_reads_our_blocks(codec: str, tmp_path: Path) -> None:
    """A BAM and a VCF re-compressed block by block with our deflate: htslib (which checks
    CRC32 and ISIZE) reads every record, and `bgzip -t` finds nothing wrong."""
    bam = make_bam(tmp_path / "a.bam", n_reads=3000)
    vcf = make_vcf(tmp_path / "a.vcf.gz", n=3000)
    for path in (bam, vcf):
        plain = b"".join(bgzf.decompress_block(b) for b in split_blocks(path.read_bytes()))
        # cut at odd places, as re-cut edges are
        rng, pieces, pos = random.Random(3), [], 0
        while pos < len(plain):
            step = rng.randint(1, bgzf.MAX_BLOCK_DATA)
            pieces.append(bgzf.compress_block(plain[pos : pos + step]))
            pos += step
        ours = tmp_path / f"ours{''.join(path.suffixes)}"
        ours.write_bytes(b"".join(pieces) + bgzf.EOF_MARKER)
        if path.suffix == ".bam":
            with pysam.AlignmentFile(str(path)) as a, pysam.AlignmentFile(str(ours)) as b:
                want = [r.to_string() for r in a.fetch(until_eof=True)]
                assert [r.to_string() for r in b.fetch(until_eof=True)] == want
        else:
            with pysam.VariantFile(str(path)) as a, pysam.VariantFile(str(ours)) as b:
                assert [str(r) for r in b] == [str(r) for r in a]
        with pysam.BGZFile(str(ours), "rb") as f:  # htslib's own BGZF reader
            assert f.read() == plain


def test_corrupt_blocks_are_refused(codec: str) -> None:
    block = bytearray(bgzf.compress_block(b"hello world " * 500))
    bad_crc = bytearray(block)
    bad_crc[-8] ^= 1
    with pytest.raises(ValueError, match="CRC32"):
        bgzf.decompress_block(bytes(bad_crc))
    bad_size = bytearray(block)
    struct.pack_into("<I", bad_size, len(block) - 4, 100)
    with pytest.raises(ValueError, match="ISIZE"):  # inflates to more than it says
        bgzf.decompress_block(bytes(bad_size))
    struct.pack_into("<I", bad_size, len(block) - 4, 6001)
    with pytest.raises(ValueError, match="ISIZE"):  # to less
        bgzf.decompress_block(bytes(bad_size))
    huge = bytearray(block)
    struct.pack_into("<I", huge, len(block) - 4, 1 << 20)
    with pytest.raises(ValueError, match="more than"):
        bgzf.decompress_block(bytes(huge))
    garbage = block[:18] + b"\xff" * 20 + block[-8:]
    with pytest.raises(ValueError, match="corrupt"):
        bgzf.decompress_block(bytes(garbage))
    with pytest.raises(ValueError):
        bgzf.decompress_block(bytes(block[:20]))
    assert bgzf.decompress_block(bgzf.EOF_MARKER) == b""


def test_inflate_gzip_members_alike(codec: str) -> None:
    import gzip

    data = gzip.compress(b"a" * 100_000) + gzip.compress(b"b" * 1000)
    assert bytes(bgzf.inflate(data)) == b"a" * 100_000 + b"b" * 1000
    with pytest.raises(bgzf.TooLarge):
        bgzf.inflate(data, limit=50_000)
    with pytest.raises(ValueError):
        bgzf.inflate(data[:-30])


# --------------------------------------------------------------------------- open files


def test_reads_keep_one_open_file(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(bytes(range(256)) * 10)
    store = LocalStorage(str(tmp_path), "http://x")
    assert store.read("f.bin", 10, 14) == bytes([10, 11, 12, 13])
    handle = store.files._files[store.path("f.bin")]
    for i in range(20):
        assert store.read("f.bin", i, i + 1) == bytes([i])
    assert store.files._files[store.path("f.bin")] is handle and len(store.files) == 1
    assert store.read("f.bin", 2550, 99999) == bytes(range(246, 256))  # past the end: short
    assert store.read("f.bin", 5000, 6000) == b""
    assert store.read("f.bin", 5, 5) == b""


def test_a_replaced_file_is_reopened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"old content")
    store = LocalStorage(str(tmp_path), "http://x")
    assert store.read("f.bin", 0, 3) == b"old"
    old = store.files._files[store.path("f.bin")]
    # replaced by a rename (a new inode), as tools write files: the kept descriptor would
    # still read the old one; the next stat (every request asks for the version) sees it
    tmp = tmp_path / "f.tmp"
    tmp.write_bytes(b"new content!")
    os.replace(tmp, path)
    store.version("f.bin")
    assert old.file.closed
    assert store.read("f.bin", 0, 3) == b"new"
    # and without a stat: once the open file is older than HANDLE_TTL, a read checks itself
    tmp.write_bytes(b"third version")
    os.replace(tmp, path)
    monkeypatch.setattr(local, "HANDLE_TTL", 0.0)
    assert store.read("f.bin", 0, 5) == b"third"
    # rewritten in place (same inode): reads see the new bytes at once
    with open(path, "r+b") as f:
        f.write(b"THIRD")
    assert store.read("f.bin", 0, 5) == b"THIRD"
    path.unlink()
    with pytest.raises(NotFound):
        store.read("f.bin", 0, 5)


def test_open_files_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(10):
        (tmp_path / f"f{i}").write_bytes(b"%d" % i * 100)
    store = LocalStorage(str(tmp_path), "http://x")
    store.files.capacity = 3
    handles = []
    for i in range(10):
        assert store.read(f"f{i}", 0, 1) == b"%d" % i
        handles.append(store.files._files[store.path(f"f{i}")])
    assert len(store.files) == 3
    assert all(h.file.closed for h in handles[:7]) and not any(h.file.closed for h in handles[7:])


def test_threads_read_while_files_are_evicted(tmp_path: Path) -> None:
    """An evicted descriptor is closed only once no read uses it: a closed (or reused) fd
    would make a read fail or, worse, return another file's bytes."""
    for i in range(8):
        (tmp_path / f"f{i}").write_bytes(bytes([i]) * 5000)
    store = LocalStorage(str(tmp_path), "http://x")
    store.files.capacity = 2
    errors: list[Any] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(1500):
                i = rng.randrange(8)
                start = rng.randrange(4000)
                if store.read(f"f{i}", start, start + 1000) != bytes([i]) * 1000:
                    errors.append(i)
        except Exception as exc:  # pragma: no cover - what the test is looking for
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(store.files) <= 2


def test_not_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")  # opening it for reading would wait for a writer
    (tmp_path / "dir").mkdir()
    store = LocalStorage(str(tmp_path), "http://x")
    for key in ("fifo", "dir", "missing"):
        with pytest.raises(NotFound):
            store.read(key, 0, 10)
    assert len(store.files) == 0


def test_open_files_after_fork(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    store = LocalStorage(str(tmp_path), "http://x")
    store.read("f", 0, 1)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        ok = len(store.files) == 0 and store.read("f", 1, 3) == b"bc"
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.read("f", 0, 3) == b"abc" and len(store.files) == 1


# --------------------------------------------------------------------------- block cache


def test_block_cache_byte_budget() -> None:
    cache = BlockCache(max_bytes=10 * (1000 + ENTRY_OVERHEAD))
    for i in range(25):
        cache.put(("t", i), b"x" * 1000, 1000)
        assert cache.nbytes <= cache.max_bytes
    assert len(cache) == 10 and cache.get(("t", 14)) is None and cache.get(("t", 15)) is not None
    cache.get(("t", 15))  # now the most recent: survives the next put
    cache.put(("t", 99), b"y" * 1000, 1000)
    assert cache.get(("t", 15)) is not None and cache.get(("t", 16)) is None
    cache.put(("big",), b"z", cache.max_bytes)  # larger than the budget: not kept
    assert cache.get(("big",)) is None and len(cache) == 10
    cache.put(("t", 99), b"w" * 10, 10)  # replacing an entry re-weighs it
    assert cache.nbytes == 9 * (1000 + ENTRY_OVERHEAD) + 10 + ENTRY_OVERHEAD
    assert BlockCache(0).get("x") is None


def ticket_payload(engine: Htsget, root: Path, query: Query) -> bytes:
    out = []
    for block in engine.ticket(query).to_json()["htsget"]["urls"]:
        url = block["url"]
        if url.startswith("data:;base64,"):
            out.append(base64.b64decode(url[13:]))
            continue
        first, last = block["headers"]["Range"][6:].split("-")
        with open(root / url.split("/data/", 1)[1], "rb") as f:
            f.seek(int(first))
            out.append(f.read(int(last) - int(first) + 1))
    return b"".join(out)


def inflated(data: bytes) -> bytes:
    return b"".join(bgzf.decompress_block(b) for b in split_blocks(data))


def test_engine_block_cache_honours_its_budget(tmp_path: Path) -> None:
    """Tickets fill the worker's block cache up to `block_cache_bytes` and no further, and
    their payloads do not depend on the budget (0: nothing kept) or on the codec."""
    make_bam(tmp_path / "s.bam", n_reads=20000, refs=[("chr1", 2_000_000), ("chr2", 10_000)])
    make_vcf(tmp_path / "c.vcf.gz", n=20000)
    budget = 256 << 10
    engines = {}
    for name, size in (("small", budget), ("none", 0), ("default", None)):
        config = for_data_dir(str(tmp_path))
        if size is not None:
            config.block_cache_bytes = size
        engines[name] = Htsget(config)
    rng = random.Random(8)
    queries = []
    for _ in range(30):
        s = rng.randrange(0, 1_900_000)
        queries.append(Query(Endpoint.READS, "s", Format.BAM,
                             regions=(Region("chr1", s, s + rng.randint(100, 50_000)),)))
        s = rng.randrange(0, 290_000)
        queries.append(Query(Endpoint.VARIANTS, "c", Format.VCF,
                             regions=(Region("1", s, s + rng.randint(100, 50_000)),)))
    for q in queries + queries[:10]:
        want = inflated(ticket_payload(engines["default"], tmp_path, q))
        for name in ("small", "none"):
            assert inflated(ticket_payload(engines[name], tmp_path, q)) == want
        assert engines["small"].cache.blocks.nbytes <= budget
    assert len(engines["none"].cache.blocks) == 0
    blocks = engines["default"].cache.blocks
    assert blocks.nbytes > budget and blocks.hits > 0  # the repeats hit
    assert engines["small"].cache.blocks.nbytes > budget // 2  # and the budget is used


def test_block_cache_never_serves_an_old_version(tmp_path: Path) -> None:
    """Blocks are kept per file version: a rewritten file's tickets use the new blocks."""
    make_vcf(tmp_path / "c.vcf.gz", n=3000, seed=1)
    engine = Htsget(for_data_dir(str(tmp_path)))
    q = Query(Endpoint.VARIANTS, "c", Format.VCF, regions=(Region("1", 1000, 200_000),))
    first = inflated(ticket_payload(engine, tmp_path, q))
    other = tmp_path / "other"
    other.mkdir()
    make_vcf(other / "c.vcf.gz", n=3000, seed=5)
    for suffix in ("", ".tbi"):
        os.replace(other / f"c.vcf.gz{suffix}", tmp_path / f"c.vcf.gz{suffix}")
    second = inflated(ticket_payload(engine, tmp_path, q))
    assert second != first
    assert second == inflated(ticket_payload(Htsget(for_data_dir(str(tmp_path))), tmp_path, q))
