"""`make bench-check` (CI): a quick run of the figures that guard correctness and the HTTP
layer, on small data, compared with bench/baseline.json.

Fails (exit 1) when
- exactness is below 100 % for any format (random region tickets of BAM, CRAM, VCF and BCF,
  records vs htslib, through the HTTP API), or
- a ratio (each measured against its reference in the same run, median of 3 runs) is worse
  than the baseline's by more than `--tolerance` (3x): the HTTP layer's own time per ticket
  vs a bare Flask view (in-process), tickets with random regions vs bare Flask under load,
  /data 64 KiB ranges vs bare Flask, nginx + htsgetr accel vs nginx alone.

Figures go to build/bench-check.json. `--write-baseline` stores this run as
bench/baseline.json (commit it from a quiet machine of the kind CI runs on).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import http_load  # noqa: E402
import results  # noqa: E402
from exactness import SMALL_REFS, exactness, make_small  # noqa: E402


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--baseline", type=Path, default=BENCH / "baseline.json")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench-check.json")
    parser.add_argument("--tolerance", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=3.0, help="per wrk run")
    parser.add_argument("--write-baseline", action="store_true")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    data = make_small(ROOT / "build" / "bench-check-data")
    root = data["BAM"].parent
    exactness(data, regions=40)
    http_load.bench_http_inprocess(root, "small", SMALL_REFS[:2], "http.inprocess")
    http_load.bench_load_random(root, "small", SMALL_REFS[:2], "load.random_regions",
                                seconds=args.seconds)
    http_load.bench_data_ranges(root, seconds=args.seconds)
    # nginx in front, each mode and verifier: two pairs of runs each (a gate, not a figure)
    with tempfile.TemporaryDirectory() as tmp:
        for sub, mode, name, verifier in http_load.ACCEL_BENCHES:
            http_load.bench_accel(root, Path(tmp) / sub, mode, name, seconds=args.seconds,
                                  repeats=2, verifier=verifier)
    results.save(args.out)
    print(f"bench-check: {len(results.FIGURES)} figures in {time.monotonic() - t0:.0f} s -> "
          f"{args.out}")
    if args.write_baseline:
        results.save(args.baseline)
        print(f"baseline written: {args.baseline}")
        return 0
    if not args.baseline.exists():
        print(f"bench-check: no baseline at {args.baseline}; exactness only")
        baseline = {}
    else:
        baseline = results.load(args.baseline)
    failures = results.compare(results.FIGURES, baseline, args.tolerance)
    for line in failures:
        print(f"bench-check FAILED: {line}")
    if not failures:
        print(f"bench-check: exactness 100 %, every ratio within {args.tolerance:g}x of the "
              "baseline")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
