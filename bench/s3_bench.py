"""S3 round trips: how many storage requests a ticket waits on, cold and warm, per format.

Against moto's S3 server (a real HTTP endpoint on a loopback port) holding the deep bench
data: `deep15.bam`, a CRAM and a BCF made from it and from `deep15.vcf.gz`, and the
GRCh38-scale `genome.bam` (a 5 MB BAI) when `bench/run.py` made it. For each format, cold
tickets on random 1-20 kbp regions (every cache emptied before each: a file this worker has
not seen, its S3 client already connected), then the same ticket again, then a new region of
the now warm file. Two ways:

- "one by one": the storage without its batch capability (`stat_many`, `read_many`,
  `prefetch` hidden), which is how every S3 ticket was made before: a HEAD per candidate file,
  a GET per read, each waiting for the one before.
- "batched": a listing, then header + index + EOF in parallel, then the edge blocks in
  parallel (storage/base.py `Batched`, storage/s3.py).

Printed per format: sequential round trips (what latency multiplies), requests (counted by
the storage, and by moto's own request log), and wall-clock with a simulated round-trip time
added to every request (default 20 ms, about S3's first-byte latency in-region), where
requests sent together wait together. Both ways must give identical tickets (byte ranges and
inline blocks), also identical to the same file on local disk.

`python bench/s3_bench.py [--rtt SECONDS] [--tickets N] [--data DIR]`; `bench/run.py` calls
`main()`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from deep_data import DEEP_REF, make_deep15_cram_bcf  # noqa: E402

from htsgetr.config import Config, LocationConfig  # noqa: E402
from htsgetr.engine import Htsget  # noqa: E402
from htsgetr.protocol import Endpoint, Format, Query, Region  # noqa: E402
from htsgetr.storage.s3 import S3Storage  # noqa: E402

try:  # bench/results.py: the figures `make bench` keeps (bench/results.json)
    import results as figures
except ImportError:  # pragma: no cover - an older tree: printed only
    figures = None  # type: ignore[assignment]

BUCKET = "htsgetr-bench"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
}
GRCH38_NAMES = [f"chr{i}" for i in range(1, 23)] + ["chrX"]


@dataclass(frozen=True)
class Case:
    label: str
    id: str  # the htsget ID (the object key without extension)
    format: Format
    files: tuple[str, ...]  # data file first, then its companions
    regions: tuple[str, ...]  # reference names to draw regions on
    length: int  # of each reference (regions are drawn below it)


@dataclass
class Tally:
    rounds: list[int] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)

    def add(self, rounds: int, calls: int, ms: float) -> None:
        self.rounds.append(rounds)
        self.calls.append(calls)
        self.ms.append(ms)

    def summary(self) -> dict[str, float]:
        return {
            "rounds_max": max(self.rounds), "rounds_mean": statistics.mean(self.rounds),
            "calls_mean": statistics.mean(self.calls),
            "ms_median": statistics.median(self.ms), "ms_max": max(self.ms),
        }


# --------------------------------------------------------------------------- data


def make_data(cache: Path) -> list[Case]:
    """The bench files (made once into `cache`), as cases."""
    make_deep15_cram_bcf(cache)
    cases = [
        Case("BAM deep15", "deep15", Format.BAM, ("deep15.bam", "deep15.bam.bai"),
             (DEEP_REF,), 9_900_000),
        Case("CRAM deep15", "deep15", Format.CRAM, ("deep15.cram", "deep15.cram.crai"),
             (DEEP_REF,), 9_900_000),
        Case("VCF deep15", "deep15", Format.VCF, ("deep15.vcf.gz", "deep15.vcf.gz.tbi"),
             (DEEP_REF,), 9_900_000),
        Case("BCF deep15", "deep15", Format.BCF, ("deep15.bcf", "deep15.bcf.csi"),
             (DEEP_REF,), 9_900_000),
    ]
    if (cache / "genome.bam.bai").exists():  # made by bench/run.py: a GRCh38-scale BAI
        cases.append(Case("BAM GRCh38 5 MB BAI", "genome", Format.BAM,
                          ("genome.bam", "genome.bam.bai"), tuple(GRCH38_NAMES), 40_000_000))
    return cases


# --------------------------------------------------------------------------- moto


class Moto:
    """moto's S3 server as a process; its request log counts what reached it."""

    def __init__(self, log: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, **AWS_ENV})
        import requests

        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(self.url + "/moto-api/", timeout=1)
                break
            except requests.RequestException:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("moto's server did not start") from None
                time.sleep(0.1)

    def requests(self) -> int:
        lines = self.log.read_text(errors="replace").splitlines()
        return sum(1 for ln in lines if "HTTP/1.1" in ln and "/moto-api" not in ln)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)


# --------------------------------------------------------------------------- measuring


def engine_for(moto: Moto, rtt: float, batched: bool) -> tuple[Htsget, S3Storage]:
    engine = Htsget(Config(locations=[LocationConfig(
        backend="s3", bucket=BUCKET, endpoint_url=moto.url, path_style=True, cache_ttl=60)]))
    storage = engine.resolver.rules[0][2]
    assert isinstance(storage, S3Storage)
    if not batched:  # hide the capability: the one-by-one way every ticket took before
        storage.stat_many = storage.read_many = storage.prefetch = None  # type: ignore[method-assign,assignment]
    if rtt > 0:
        storage.client.meta.events.register("before-send.s3", lambda **_: time.sleep(rtt))
    return engine, storage


def forget(engine: Htsget, storage: S3Storage) -> None:
    """Empty every cache a ticket fills (the S3 client and the bucket's region stay)."""
    engine.cache.clear()
    blocks = getattr(engine.cache, "blocks", None)  # the per-worker block cache, if any
    if blocks is not None:
        blocks.clear()
    storage.meta_cache.clear()
    storage.windows.clear()
    storage.held = type(storage.held)(storage.held.budget, storage.held.ttl)


def timed(engine: Htsget, storage: S3Storage, query: Query) -> tuple[dict, int, int, float]:
    rounds, calls = storage.rounds, storage.calls
    t0 = time.perf_counter()
    ticket = engine.ticket(query).to_json()
    ms = (time.perf_counter() - t0) * 1000
    return ticket, storage.rounds - rounds, storage.calls - calls, ms


def shape(ticket: dict) -> list[tuple[str, Any]]:
    """What must not change: byte ranges and inline blocks (not the presigned signature)."""
    out = []
    for block in ticket["htsget"]["urls"]:
        url = block["url"]
        where = url if url.startswith("data:") else url.split("?")[0].rsplit("/", 1)[-1]
        out.append((where, block.get("headers")))
    return out


def queries(case: Case, n: int, seed: int) -> list[Query]:
    rng = random.Random(seed)
    endpoint = Endpoint.READS if case.format in (Format.BAM, Format.CRAM) else Endpoint.VARIANTS
    out = []
    for _ in range(n):
        ref = rng.choice(case.regions)
        start = rng.randrange(0, case.length)
        region = Region(ref, start, start + rng.randint(1000, 20_000))
        out.append(Query(endpoint, case.id, case.format, regions=(region,)))
    return out


def run_case(case: Case, moto: Moto, data: Path, n: int, rtt: float) -> dict[str, Any]:
    qs = queries(case, n + 1, seed=len(case.label))
    local = Htsget(Config(locations=[LocationConfig(root=str(data))]))
    shapes: dict[bool, list[list[tuple[str, Any]]]] = {}
    result: dict[str, Any] = {}
    for batched in (False, True):
        engine, storage = engine_for(moto, rtt, batched)
        engine.ticket(qs[0])  # connect, learn the bucket's region: a running worker has
        cold, again, other = Tally(), Tally(), Tally()
        got = []
        before = moto.requests()
        counted = 0
        for i, q in enumerate(qs[:n]):
            forget(engine, storage)
            ticket, rounds, calls, ms = timed(engine, storage, q)
            cold.add(rounds, calls, ms)
            counted += calls
            got.append(shape(ticket))
            _, rounds, calls, ms = timed(engine, storage, q)
            again.add(rounds, calls, ms)
            counted += calls
            _, rounds, calls, ms = timed(engine, storage, qs[(i + 1) % n])  # file now warm
            other.add(rounds, calls, ms)
            counted += calls
        time.sleep(0.3)
        logged = moto.requests() - before
        shapes[batched] = got
        result["batched" if batched else "one_by_one"] = {
            "cold": cold.summary(), "same_again": again.summary(),
            "new_region_warm_file": other.summary(),
            "requests_counted": counted, "requests_moto_logged": logged,
        }
    local_shapes = [shape(local.ticket(q).to_json()) for q in qs[:n]]
    same = shapes[True] == shapes[False]
    inline_local = [[b for b in s if b[0].startswith("data:")] for s in local_shapes]
    inline_s3 = [[b for b in s if b[0].startswith("data:")] for s in shapes[True]]
    headers_local = [[b[1] for b in s] for s in local_shapes]
    headers_s3 = [[b[1] for b in s] for s in shapes[True]]
    result["identical_tickets"] = same and inline_local == inline_s3 and \
        headers_local == headers_s3
    return result


def report(case: Case, r: dict[str, Any], rtt: float) -> None:
    def cell(way: str, what: str) -> str:
        s = r[way][what]
        return (f"{s['rounds_max']:>2} ({s['rounds_mean']:4.1f}) {s['calls_mean']:5.1f} "
                f"{s['ms_median']:7.1f}")

    print(f"  {case.label}")
    for way, name in (("one_by_one", "one by one"), ("batched", "batched")):
        print(f"    {name:11s} cold {cell(way, 'cold')} | same again {cell(way, 'same_again')}"
              f" | new region, warm file {cell(way, 'new_region_warm_file')}")
    b = r["batched"]
    print(f"    requests: counted {b['requests_counted']}, moto logged "
          f"{b['requests_moto_logged']}; identical tickets (one by one, batched, local "
          f"disk): {'yes' if r['identical_tickets'] else 'NO'}")


def record(out: dict[str, Any]) -> None:
    """The figures, into bench/results.py's set (`make bench` saves them all)."""
    if figures is None:
        return
    for label, r in out["formats"].items():
        name = "s3." + "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")
        b, o = r["batched"], r["one_by_one"]
        figures.record(f"{name}.cold.rounds_max", b["cold"]["rounds_max"], "round trips",
                       "lower")
        figures.record(f"{name}.cold.rounds_max_one_by_one", o["cold"]["rounds_max"],
                       "round trips")
        figures.record(f"{name}.same_again.rounds_max", b["same_again"]["rounds_max"],
                       "round trips")
        figures.record(f"{name}.new_region_warm_file.rounds_max",
                       b["new_region_warm_file"]["rounds_max"], "round trips")
        figures.record(f"{name}.cold.requests_mean", b["cold"]["calls_mean"], "requests")
        figures.record(f"{name}.cold.ms_median", b["cold"]["ms_median"], "ms")
        figures.record(f"{name}.cold.ms_ratio_to_one_by_one",
                       b["cold"]["ms_median"] / o["cold"]["ms_median"], "x", "lower")
        figures.record(f"{name}.tickets_exact_pct", 100.0 if r["identical_tickets"] else 0.0,
                       "%")


def main(cache: Optional[Path] = None, rtt: float = 0.02, tickets: int = 20,
         results: Optional[Path] = None) -> dict[str, Any]:
    """Measure, print, record the figures (bench/results.py); with `results`, also merge
    them into that JSON file (when run alone: `bench/run.py` saves every figure itself)."""
    cache = cache or ROOT / "build" / "bench-data"
    cache.mkdir(parents=True, exist_ok=True)
    cases = make_data(cache)
    for name, value in AWS_ENV.items():
        os.environ[name] = value
    out: dict[str, Any] = {"rtt_s": rtt, "tickets": tickets, "formats": {}}
    with tempfile.TemporaryDirectory() as tmp:
        moto = Moto(Path(tmp) / "moto.log")
        try:
            import boto3

            client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
            client.create_bucket(Bucket=BUCKET)
            for name in sorted({f for c in cases for f in c.files}):
                client.upload_file(str(cache / name), BUCKET, name)
            print(f"S3 round trips per ticket (moto's server, {rtt * 1000:.0f} ms added per "
                  f"request; {tickets} random 1-20 kbp regions per format)")
            print("    columns: sequential round trips max (mean), requests mean, "
                  "ms median")
            for case in cases:
                r = run_case(case, moto, cache, tickets, rtt)
                out["formats"][case.label] = r
                report(case, r, rtt)
        finally:
            moto.stop()
    worst = max(r["batched"]["cold"]["rounds_max"] for r in out["formats"].values())
    print(f"  worst cold ticket: {worst} sequential round trips (goal <= 3)")
    record(out)
    if results is not None and figures is not None:
        known = figures.load(results) if results.exists() else {}
        known.update({k: v for k, v in figures.FIGURES.items() if k.startswith("s3.")})
        figures.save(results, known)
    elif results is not None:
        results.write_text(json.dumps({"s3_round_trips": out}, indent=1) + "\n")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt", type=float, default=0.02, help="seconds added per request")
    parser.add_argument("--tickets", type=int, default=20, help="cold tickets per format")
    parser.add_argument("--data", type=Path, default=None, help="bench data directory "
                        "(default build/bench-data)")
    parser.add_argument("--no-results", action="store_true", help="do not write results.json")
    args = parser.parse_args()
    if not shutil.which("samtools") or not shutil.which("bcftools"):
        raise SystemExit("samtools and bcftools are needed (make deps)")
    main(args.data, rtt=args.rtt, tickets=args.tickets,
         results=None if args.no_results else ROOT / "bench" / "results.json")
