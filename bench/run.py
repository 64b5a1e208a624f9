"""`make bench`: htsgetr's hot paths, each as a ratio against a reference measured in the same run.

- index: cold ticket (parse a several-MB BAI + header + query) and warm ticket (cached)
  vs htslib via pysam opening the same BAM + BAI and seeking to the region.
- http: ticket requests through gunicorn vs a bare Flask app under the same gunicorn.
- load (bench/http_load.py): tickets for RANDOM regions per request vs bare Flask (req/s,
  p99); /data 64 KiB ranges vs bare Flask; nginx + htsgetr accel vs nginx alone.
- exactness (bench/exactness.py): records of random region tickets vs htslib, four formats.
- data: /data range throughput (sendfile) vs nginx serving the same file.
- bench/micro.py: ticket bytes vs the minimal block cover (BAM/VCF/BCF/CRAM, deep and
  sparse), RSS per worker after 50 distinct large indexes, index parsing MB/s and chunk
  query us per kind, the Cython core vs its pure-Python twin.

Every figure printed is also kept (bench/results.py `record`) and written to
bench/results.json. Tests never depend on these numbers; `make bench-check` (bench/check.py)
compares a quick run's ratios with bench/baseline.json.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from htsgetr.config import for_data_dir  # noqa: E402
from htsgetr.engine import Htsget  # noqa: E402
from htsgetr.protocol import Endpoint, Query, parse_get  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import http_load  # noqa: E402
import results  # noqa: E402
from deep_data import (  # noqa: E402
    make_deep15_bam,
    make_deep15_cram_bcf,
    make_deep15h_cram,
    make_deep_vcf,
)
from exactness import exactness, make_small  # noqa: E402
from results import record  # noqa: E402

# GRCh38 primary assembly lengths (chr1..22, X, Y, M)
GRCH38 = [248956422, 242193529, 198295559, 190214555, 181538259, 170805979, 159345973,
          145138636, 138394717, 133797422, 135086622, 133275309, 114364328, 107043718,
          101991189, 90338345, 83257441, 80373285, 58617616, 64444167, 46709983, 50818468,
          156040895, 57227415, 16569]
NAMES = [f"chr{i}" for i in range(1, 23)] + ["chrX", "chrY", "chrM"]


def timeit(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds per call."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_big_bam(out: Path, spacing: int = 6000) -> Path:
    """A BAM with a read every `spacing` bp over GRCh38-length references: a multi-MB BAI."""
    bam = out / "genome.bam"
    if (out / "genome.bam.bai").exists():
        return bam
    rng = random.Random(1)
    sam = out / "genome.sam"
    with open(sam, "w") as f:
        f.write("@HD\tVN:1.6\tSO:coordinate\n")
        for name, length in zip(NAMES, GRCH38):
            f.write(f"@SQ\tSN:{name}\tLN:{length}\n")
        seq, qual = "ACGT" * 25, "I" * 100
        n = 0
        for name, length in zip(NAMES, GRCH38):
            for pos in range(1, length - 200, spacing):
                p = pos + rng.randint(0, spacing // 2)
                f.write(f"r{n}\t0\t{name}\t{p}\t60\t100M\t*\t0\t0\t{seq}\t{qual}\n")
                n += 1
    subprocess.run(["samtools", "view", "-b", "-o", str(bam), str(sam)], check=True)
    sam.unlink()
    subprocess.run(["samtools", "index", str(bam)], check=True)
    return bam


def make_deep_bam(out: Path, length: int = 2_000_000, depth: int = 30) -> Path:
    """30x coverage of 150 bp reads over one 2 Mbp reference: region tickets must trim
    chunks through thousands of records per 16 kbp window."""
    bam = out / "deep.bam"
    if (out / "deep.bam.bai").exists():
        return bam
    rng = random.Random(3)
    sam = out / "deep.sam"
    n = length * depth // 150
    with open(sam, "w") as f:
        f.write(f"@HD\tVN:1.6\tSO:coordinate\n@SQ\tSN:chrD\tLN:{length}\n")
        seq, qual = "ACGT" * 37 + "AC", "I" * 150
        for i, p in enumerate(sorted(rng.randrange(1, length - 150) for _ in range(n))):
            f.write(f"d{i}\t0\tchrD\t{p}\t60\t150M\t*\t0\t0\t{seq}\t{qual}\n")
    subprocess.run(["samtools", "view", "-b", "-o", str(bam), str(sam)], check=True)
    sam.unlink()
    subprocess.run(["samtools", "index", str(bam)], check=True)
    return bam


def bench_deep(data: Path) -> None:
    import pysam

    rng = random.Random(4)
    engine = Htsget(for_data_dir(str(data)))
    f = pysam.AlignmentFile(str(data / "deep.bam"))
    print("deep (30x, 150 bp reads): region ticket incl. trimming vs htslib fetching the records")
    for span in (1_000, 100_000):
        starts = [rng.randrange(0, 1_800_000) for _ in range(50)]
        ours_it, ref_it = iter(starts * 20), iter(starts * 20)

        def ours(it: Iterator[int] = ours_it, span: int = span) -> None:
            s = next(it)
            engine.ticket(parse_get(Endpoint.READS, "deep", {
                "referenceName": "chrD", "start": str(s), "end": str(s + span)}))

        def ref(it: Iterator[int] = ref_it, span: int = span) -> None:
            s = next(it)
            for _ in f.fetch("chrD", s, s + span):
                pass

        t_ours, t_ref = timeit(ours, 200), timeit(ref, 200)
        print(f"  {span:>7} bp region {t_ours * 1e3:8.2f} ms   htslib fetch all records "
              f"{t_ref * 1e3:8.2f} ms   ratio {t_ours / t_ref:5.2f}")
        record(f"deep30.region_{span}.ms", t_ours * 1e3, "ms")
        record(f"deep30.region_{span}.htslib_ms", t_ref * 1e3, "ms")
        record(f"deep30.region_{span}.ratio", t_ours / t_ref, "x (time)", better="lower")


def bench_index(data: Path) -> None:
    import pysam

    bai = data / "genome.bam.bai"
    print(f"index: genome.bam.bai = {bai.stat().st_size / 1e6:.1f} MB")
    rng = random.Random(2)
    regions = []
    for _ in range(200):
        i = rng.randrange(22)
        start = rng.randrange(GRCH38[i] - 1_000_000)
        regions.append((NAMES[i], start, start + rng.choice([1000, 100_000, 1_000_000])))

    def cold_ours() -> None:
        name, s, e = rng.choice(regions)
        Htsget(for_data_dir(str(data))).ticket(parse_get(
            Endpoint.READS, "genome", {"referenceName": name, "start": str(s), "end": str(e)}))

    def cold_htslib() -> None:
        name, s, e = rng.choice(regions)
        with pysam.AlignmentFile(str(data / "genome.bam")) as f:
            next(f.fetch(name, s, e), None)

    engine = Htsget(for_data_dir(str(data)))

    def warm_ours() -> None:
        name, s, e = rng.choice(regions)
        engine.ticket(parse_get(
            Endpoint.READS, "genome", {"referenceName": name, "start": str(s), "end": str(e)}))

    warm_ours()
    f = pysam.AlignmentFile(str(data / "genome.bam"))

    def warm_htslib() -> None:
        name, s, e = rng.choice(regions)
        next(f.fetch(name, s, e), None)

    c_ours, c_ref = timeit(cold_ours, 30), timeit(cold_htslib, 30)
    w_ours, w_ref = timeit(warm_ours, 500), timeit(warm_htslib, 500)
    print(f"  cold ticket        {c_ours * 1e3:8.2f} ms   htslib open+index+fetch "
          f"{c_ref * 1e3:8.2f} ms   ratio {c_ours / c_ref:5.2f}")
    print(f"  warm ticket        {w_ours * 1e3:8.3f} ms   htslib warm fetch       "
          f"{w_ref * 1e3:8.3f} ms   ratio {w_ours / w_ref:5.2f}")
    record("index.bai_mb", bai.stat().st_size / 1e6, "MB")
    record("index.cold.ms", c_ours * 1e3, "ms")
    record("index.cold.htslib_ms", c_ref * 1e3, "ms")
    record("index.cold.ratio", c_ours / c_ref, "x (time)", better="lower")
    record("index.warm.ms", w_ours * 1e3, "ms")
    record("index.warm.htslib_ms", w_ref * 1e3, "ms")
    record("index.warm.ratio", w_ours / w_ref, "x (time)", better="lower")


def _serve(cmd: list[str], url: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    for _ in range(200):
        try:
            requests.get(url, timeout=1)
            return proc
        except requests.RequestException:
            time.sleep(0.05)
    raise RuntimeError(f"{cmd[0]} did not start")


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(10)


def bench_http(data: Path, tmp: Path) -> None:
    bare = tmp / "bare_app.py"
    bare.write_text("from flask import Flask\napp = Flask('bare')\n"
                    "@app.get('/ping')\ndef ping():\n    return {'ok': True}\n")
    port_a, port_b = 18231, 18232
    ours = _serve([sys.executable, "-m", "htsgetr", "serve", "--data-dir", str(data),
                   "--port", str(port_a), "--workers", "1"], f"http://127.0.0.1:{port_a}/service-info")
    flask_proc = _serve([sys.executable, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port_b}",
                         "--chdir", str(tmp), "bare_app:app"], f"http://127.0.0.1:{port_b}/ping")
    try:
        s = requests.Session()
        url = f"http://127.0.0.1:{port_a}/reads/genome?referenceName=chr7&start=5000000&end=5100000"
        s.get(url)
        t_ours = timeit(lambda: s.get(url).raise_for_status(), 300)
        t_bare = timeit(lambda: s.get(f"http://127.0.0.1:{port_b}/ping").raise_for_status(), 300)
        print(f"http: ticket request {t_ours * 1e3:6.2f} ms   bare Flask {t_bare * 1e3:6.2f} ms"
              f"   ratio {t_ours / t_bare:5.2f}")
        record("http.ticket_request.ms", t_ours * 1e3, "ms")
        record("http.ticket_request.bare_ms", t_bare * 1e3, "ms")
        record("http.ticket_request.ratio", t_ours / t_bare, "x (time)", better="lower")
    finally:
        _stop(ours)
        _stop(flask_proc)
    bench_load(data)


def bench_load(data: Path) -> None:
    """Tickets under load with RANDOM regions per request vs bare Flask (bench/http_load.py):
    the deep BAM (1-20 kbp, the issue's figure) and the GRCh38-scale sparse BAM, and one
    fixed region (chr7:0-1000 of the latter, the same request every time); /data small
    ranges vs bare Flask; nginx + htsgetr accel, and nginx checking signed urls itself
    (nginx-direct), vs nginx alone."""
    deep, genome = [("chrD", 10_000_000)], list(zip(NAMES, GRCH38))[:24]
    http_load.bench_http_inprocess(data, "deep15", deep, "http.inprocess")
    http_load.bench_load_random(data, "deep15", deep, "load.deep15")
    # with a block cache holding the file's blocks once inflated (260 MiB): what is left is
    # re-compressing the two edges and the rest of the ticket
    http_load.bench_load_random(data, "deep15", deep, "load.deep15_cached",
                                block_cache=512 << 20, warmup=15)
    http_load.bench_load_random(data, "genome", genome, "load.genome")
    # the same with a block cache holding the file's inflated blocks (97 MiB; the default
    # 64 MiB holds two thirds, so a third of the tickets inflate the block they cut)
    http_load.bench_load_random(data, "genome", genome, "load.genome_cached",
                                block_cache=256 << 20, warmup=10)
    # one fixed region, every request the same (the first load figure): a reference
    # "length" of span + 1 makes the script's random start always 0
    http_load.bench_load_random(data, "genome", [("chr7", 1001)], "load.fixed_region",
                                spans=(1000, 1000), what="one fixed region (chr7:0-1000)")
    http_load.bench_data_ranges(data)
    http_load.bench_turns(data)
    with tempfile.TemporaryDirectory() as tmp:
        for sub, mode, name, verifier in http_load.ACCEL_BENCHES:
            http_load.bench_accel(data, Path(tmp) / sub, mode, name, verifier=verifier)


def bench_data(data: Path, tmp: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port_a, port_n = 18233, 18234
    blob = http_load.make_blob(data)  # incompressible; a .bam: /data serves data files only
    size = blob.stat().st_size
    ours = _serve([sys.executable, "-m", "htsgetr", "serve", "--data-dir", str(data),
                   "--port", str(port_a), "--workers", "1"], f"http://127.0.0.1:{port_a}/service-info")
    procs = [ours]
    try:
        conf = tmp / "nginx.conf"
        conf.write_text(
            f"daemon off; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;\n"
            "events {}\nhttp { access_log off; sendfile on;\n"
            f"  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};\n"
            f"  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};\n"
            f"  server {{ listen 127.0.0.1:{port_n}; location / {{ root {data}; }} }} }}\n")
        if os.path.exists(nginx):
            procs.append(_serve([nginx, "-c", str(conf)], f"http://127.0.0.1:{port_n}/"))
        s = requests.Session()
        length = min(size, 32 << 20)
        hdr = {"Range": f"bytes=0-{length - 1}"}

        curl = shutil.which("curl")

        def fetch(url: str) -> None:
            if curl:  # a C client, so the servers, not the client, are measured
                out = subprocess.run([curl, "-s", "-o", "/dev/null", "-w", "%{size_download}",
                                      "-H", f"Range: {hdr['Range']}", url],
                                     capture_output=True, text=True, check=True).stdout
                assert int(out) == length
                return
            r = s.get(url, headers=hdr)
            assert len(r.content) == length

        t_ours = timeit(lambda: fetch(f"http://127.0.0.1:{port_a}/data/{blob.name}"), 10)
        line = f"data: {length / t_ours / 1e6:7.0f} MB/s"
        record("data.range_32m.mb_s", length / t_ours / 1e6, "MB/s")
        if len(procs) > 1:
            t_ngx = timeit(lambda: fetch(f"http://127.0.0.1:{port_n}/{blob.name}"), 10)
            line += (f"   nginx {length / t_ngx / 1e6:7.0f} MB/s"
                     f"   ratio (time) {t_ours / t_ngx:5.2f}")
            record("data.range_32m.nginx_mb_s", length / t_ngx / 1e6, "MB/s")
            record("data.range_32m.ratio", t_ours / t_ngx, "x (time)", better="lower")
        client = "curl" if curl else "python requests"
        print(line + f"   ({length >> 20} MiB range, client = {client})")
    finally:
        for p in procs:
            _stop(p)


def _raw_blocks(path: Path, skip: int = 10, count: int = 300) -> list[bytes]:
    """`count` whole BGZF blocks of `path` after its first `skip` (past the header)."""
    from htsgetr.formats import bgzf

    data, out, pos = path.read_bytes()[: 40 << 20], [], 0
    while pos < len(data) and len(out) < skip + count:
        size = bgzf.block_size(data[pos : pos + 64])
        out.append(data[pos : pos + size])
        pos += size
    return out[skip:]


def _cpu_best(fn: Callable[[], object], rounds: int = 5) -> float:
    """Least CPU seconds of `rounds` calls (CPU time: other load on the machine matters less)."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def _inflate_all(blocks: list[bytes]) -> None:
    from htsgetr.formats import bgzf

    for b in blocks:
        bgzf.decompress_block(b)


def _deflate_all(edges: list[bytes], sizes: list[int]) -> None:
    from htsgetr.formats import bgzf

    sizes[:] = [len(bgzf.compress_block(e)) for e in edges]


def bench_codecs(data: Path) -> None:
    """MB/s (uncompressed) inflating whole BGZF blocks (CRC32 and ISIZE checked) and deflating
    re-cut edges (random block prefixes and suffixes) into BGZF blocks, per codec installed
    (`bgzf.codecs()`; the first is the default)."""
    from htsgetr.formats import bgzf

    print(f"codecs (in use: {bgzf.CODEC.name}; CPU time, best of 5)")
    for name in ("deep15.bam", "deep15.vcf.gz"):
        blocks = _raw_blocks(data / name)
        plain = [bgzf.decompress_block(b) for b in blocks]
        total = sum(map(len, plain))
        rng = random.Random(5)
        edges = [p[: rng.randrange(1, len(p))] if i % 2 else p[rng.randrange(len(p) - 1):]
                 for i, p in enumerate(plain) if len(p) > 2]
        edge_total = sum(map(len, edges))
        for codec in bgzf.codecs():
            previous = bgzf.use_codec(codec)
            try:
                t_in = _cpu_best(partial(_inflate_all, blocks))
                sizes: list[int] = []
                t_out = _cpu_best(partial(_deflate_all, edges, sizes))
                level = bgzf.CODEC.level
            finally:
                bgzf.use_codec(previous.name)
            print(f"  {name:14} {codec:16} inflate {total / t_in / 1e6:6.0f} MB/s "
                  f"({t_in / len(blocks) * 1e6:5.0f} us/block)   deflate level {level} "
                  f"{edge_total / t_out / 1e6:5.0f} MB/s ({t_out / len(edges) * 1e6:5.0f} "
                  f"us/edge, ratio {edge_total / sum(sizes):4.2f})")
            record(f"codecs.{name}.{codec}.inflate_mb_s", total / t_in / 1e6, "MB/s")
            record(f"codecs.{name}.{codec}.deflate_mb_s", edge_total / t_out / 1e6, "MB/s")
            record(f"codecs.{name}.{codec}.deflate_ratio", edge_total / sum(sizes), "x")


def _stats_us(times: list[float], key: str = "") -> str:
    times = sorted(times)
    p50, p99 = times[len(times) // 2], times[int(len(times) * 0.99)]
    if key:  # bench/results.json
        record(f"{key}.mean_us", statistics.mean(times) * 1e6, "us")
        record(f"{key}.p50_us", p50 * 1e6, "us")
        record(f"{key}.p99_us", p99 * 1e6, "us")
    return (f"mean {statistics.mean(times) * 1e6:7.0f} us   p50 {p50 * 1e6:7.0f} us   "
            f"p99 {p99 * 1e6:7.0f} us")


def _deep_regions(rng: random.Random, endpoint: Endpoint, n: int, fmt: str = "",
                  ident: str = "deep15") -> list[Query]:
    """`n` random 1-20 kbp regions of the deep test data (deep15, chrD: 10 Mbp; or `ident`,
    the same reads), in `fmt` (default: BAM or VCF)."""
    out = []
    for _ in range(n):
        s = rng.randrange(0, 9_900_000)
        args = {"referenceName": "chrD", "start": str(s), "end": str(s + rng.randint(1000, 20000))}
        out.append(parse_get(endpoint, ident, {**args, **({"format": fmt} if fmt else {})}))
    return out


def _htslib_cpu(path: Path, queries: list[Query]) -> float:
    """Mean CPU seconds htslib takes to read the records of each query's region of `path`
    (chrD of the deep data): `count` for reads (decoded in C, no Python objects), a fetch
    for variants. The first region is read once beforehand (index loaded)."""
    import pysam

    spans = [(q.regions[0].start or 0, q.regions[0].end or 0) for q in queries]
    reads = path.suffix in (".bam", ".cram")
    opener = pysam.AlignmentFile if reads else pysam.VariantFile
    with opener(str(path)) as f:
        def read(s: int, e: int) -> None:
            if reads:
                f.count("chrD", s, e)
            else:
                for _ in f.fetch("chrD", s, e):
                    pass

        read(*spans[0])
        t0 = time.process_time()
        for s, e in spans:
            read(s, e)
        return (time.process_time() - t0) / len(spans)


def _against_htslib(engine: Htsget, queries: list[Query], path: Path, key: str) -> None:
    """Tickets for `queries` (CPU per ticket, the file's first ticket made before) against
    htslib reading the same regions' records (`_htslib_cpu`)."""
    engine.ticket(queries[0])
    _, cpu = _timed_tickets(engine, queries[1:])
    ref = _htslib_cpu(path, queries[1:])
    print(f"  {path.name:14} random regions   CPU mean {cpu * 1e3:7.2f} ms   htslib reading "
          f"them {ref * 1e3:7.2f} ms   ratio {cpu / ref:5.2f}")
    record(f"{key}.cpu_mean_ms", cpu * 1e3, "ms")
    record(f"{key}.htslib_ms", ref * 1e3, "ms")
    record(f"{key}.htslib_ratio", cpu / ref, "x (time)", better="lower")


def _timed_tickets(engine: Htsget, queries: list[Query]) -> tuple[list[float], float]:
    """Each ticket's wall time, and the mean CPU time per ticket."""
    times = []
    cpu0 = time.process_time()
    for q in queries:
        t0 = time.perf_counter()
        engine.ticket(q)
        times.append(time.perf_counter() - t0)
    return times, (time.process_time() - cpu0) / len(queries)


def _codec_share(engine: Htsget, queries: list[Query], bam: Path, key: str) -> None:
    """How much of a warm deep ticket's CPU the BGZF codec takes (inflating the edge blocks,
    re-compressing their cuts: what an exact ticket cannot skip), and htslib reading the same
    regions' records (`AlignmentFile.count`: every block of the region inflated, in C)."""
    import dataclasses

    from htsgetr.formats import bgzf

    spent = [0.0]

    def timed(fn: Callable[..., object]) -> Callable[..., object]:
        def wrapper(*args: object) -> object:
            t0 = time.process_time()
            try:
                return fn(*args)
            finally:
                spent[0] += time.process_time() - t0
        return wrapper

    plain = bgzf.CODEC
    bgzf.CODEC = dataclasses.replace(plain, inflate=timed(plain.inflate),
                                     deflate=timed(plain.deflate), crc32=timed(plain.crc32))
    try:
        _, cpu = _timed_tickets(engine, queries)
    finally:
        bgzf.CODEC = plain
    codec = spent[0] / len(queries)
    ref = _htslib_cpu(bam, queries[:400])
    print(f"  of which inflate/deflate/CRC32 {codec * 1e6:5.0f} us ({codec / cpu:4.0%}), the rest "
          f"{(cpu - codec) * 1e6:4.0f} us; htslib reading the same regions' records "
          f"{ref * 1e6:5.0f} us CPU (ticket/htslib {cpu / ref:4.2f}x)")
    record(f"{key}.codec_us", codec * 1e6, "us")
    record(f"{key}.other_us", (cpu - codec) * 1e6, "us")
    record(f"{key}.htslib_count_us", ref * 1e6, "us")
    record(f"{key}.htslib_ratio", cpu / ref, "x (time)", better="lower")


def bench_tickets_inprocess(data: Path, n: int = 2000) -> None:
    """`Htsget.ticket()` in-process: random 1-20 kbp regions on the deep BAM and VCF (distinct
    regions: the block cache, not a cache of tickets, is what helps), the same small region
    again (warm), and what the per-worker block cache holds after."""
    import pysam

    engine = Htsget(for_data_dir(str(data)))
    print(f"in-process tickets, {n} random 1-20 kbp regions (block_cache_bytes = "
          f"{engine.config.block_cache_bytes >> 20} MiB)")
    for endpoint in (Endpoint.READS, Endpoint.VARIANTS):
        queries = _deep_regions(random.Random(11), endpoint, n)
        engine.ticket(queries[0])
        times, cpu = _timed_tickets(engine, queries)
        kind = "BAM" if endpoint is Endpoint.READS else "VCF"
        key = f"inprocess.{kind.lower()}_random"
        print(f"  {kind} random regions   {_stats_us(times, key)}   CPU mean {cpu * 1e6:7.0f} us")
        record(f"{key}.cpu_mean_us", cpu * 1e6, "us")
    # CRAM: boundary containers re-encoded with the region's records; BCF: as BAM
    _against_htslib(engine, _deep_regions(random.Random(13), Endpoint.READS, 101, "CRAM"),
                    data / "deep15.cram", "inprocess.cram_random")
    # the same behind a header as GRCh38's (3,366 @SQ lines): what each re-cut's htslib
    # opens parse (cram_reference.coding_header keeps what the records depend on)
    _against_htslib(engine, _deep_regions(random.Random(13), Endpoint.READS, 101, "CRAM",
                                          "deep15h"),
                    data / "deep15h.cram", "inprocess.cram_grch38_header")
    _against_htslib(engine, _deep_regions(random.Random(14), Endpoint.VARIANTS, n + 1, "BCF"),
                    data / "deep15.bcf", "inprocess.bcf_random")
    # a long-running worker: the walks of earlier tickets left waypoints (formats/waypoints.py)
    rng = random.Random(12)
    for q in _deep_regions(rng, Endpoint.READS, 4 * n):
        engine.ticket(q)
    times, cpu = _timed_tickets(engine, _deep_regions(rng, Endpoint.READS, n))
    key = "inprocess.bam_random_warm"
    print(f"  BAM, after {5 * n} tickets {_stats_us(times, key)}   CPU mean {cpu * 1e6:7.0f} us"
          "   (new regions; the walks start at waypoints earlier ones left)")
    record(f"{key}.cpu_mean_us", cpu * 1e6, "us")
    _codec_share(engine, _deep_regions(rng, Endpoint.READS, n), data / "deep15.bam", key)
    small = parse_get(Endpoint.READS, "genome", {
        "referenceName": "chr7", "start": "5000000", "end": "5001000"})
    engine.ticket(small)
    times = []
    for _ in range(2000):
        t0 = time.perf_counter()
        engine.ticket(small)
        times.append(time.perf_counter() - t0)
    with pysam.AlignmentFile(str(data / "genome.bam")) as f:
        next(f.fetch("chr7", 5_000_000, 5_001_000), None)
        t_ref = timeit(lambda: next(f.fetch("chr7", 5_000_000, 5_001_000), None), 2000)
    print(f"  warm small region  {_stats_us(times, 'inprocess.warm_small')}   (goal <= 60 us; "
          f"htslib warm fetch {t_ref * 1e6:.0f} us)")
    record("inprocess.warm_small.htslib_us", t_ref * 1e6, "us")
    record("inprocess.warm_small.ratio", statistics.median(times) / t_ref, "x (time)",
           better="lower")
    blocks = engine.cache.blocks
    print(f"  block cache: {len(blocks)} entries, {blocks.nbytes >> 20} MiB, "
          f"hits {blocks.hits}, misses {blocks.misses}")
    record("inprocess.block_cache.entries", len(blocks))
    record("inprocess.block_cache.mib", blocks.nbytes / (1 << 20), "MiB")
    record("inprocess.block_cache.hits", blocks.hits)
    record("inprocess.block_cache.misses", blocks.misses)


def main() -> int:
    cache = ROOT / "build" / "bench-data"
    cache.mkdir(parents=True, exist_ok=True)
    print("generating benchmark data (once) ...", flush=True)
    make_big_bam(cache)
    make_deep_bam(cache)
    make_deep15_bam(cache)
    make_deep_vcf(cache)
    make_deep15_cram_bcf(cache)
    make_deep15h_cram(cache)
    with tempfile.TemporaryDirectory() as tmp:
        bench_codecs(cache)
        bench_tickets_inprocess(cache)
        bench_index(cache)
        bench_deep(cache)
        bench_http(cache, Path(tmp))
        bench_data(cache, Path(tmp))
        from s3_bench import main as s3_round_trips  # S3 tickets' round trips, moto's server
        s3_round_trips(cache)
    exactness(make_small(ROOT / "build" / "bench-check-data"), regions=100)
    import micro  # bytes vs minimal cover, RSS per worker, index core vs its twin

    micro.main(cache)
    results.save(ROOT / "bench" / "results.json")
    print(f"{len(results.FIGURES)} figures -> bench/results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
