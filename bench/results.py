"""Every figure `make bench` prints, as numbers: bench/results.json; and the comparison
`make bench-check` makes against bench/baseline.json.

A figure is `record(name, value, unit, better)`: `better` says which way a ratio improves
("higher": ours / reference throughput; "lower": ours / reference time) and marks it as
one that `compare` checks; figures without it (absolute req/s, ms) are kept for people,
as absolute numbers move with the machine's load. Exactness figures ("...exact_pct") must
be 100.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Optional

FIGURES: dict[str, dict[str, Any]] = {}


def record(name: str, value: float, unit: str = "", better: Optional[str] = None) -> float:
    """Keep a figure under `name` (dotted: "load.random_regions.ratio"); returns `value`."""
    if better not in (None, "higher", "lower"):
        raise ValueError(f"better: 'higher', 'lower' or None, not {better!r}")
    entry: dict[str, Any] = {"value": round(float(value), 6), "unit": unit}
    if better:
        entry["better"] = better
    FIGURES[name] = entry
    return value


def document(figures: Optional[dict[str, dict[str, Any]]] = None) -> dict[str, Any]:
    """The JSON document: the figures and the machine they were measured on."""
    return {
        "version": 1,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "figures": dict(sorted((figures if figures is not None else FIGURES).items())),
    }


def save(path: Path, figures: Optional[dict[str, dict[str, Any]]] = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document(figures), indent=1) + "\n")


def load(path: Path) -> dict[str, dict[str, Any]]:
    figures: dict[str, dict[str, Any]] = json.loads(path.read_text())["figures"]
    return figures


def compare(current: dict[str, dict[str, Any]], baseline: dict[str, dict[str, Any]],
            tolerance: float = 3.0) -> list[str]:
    """What fails: an exactness below 100 %, or a ratio worse than its baseline by more than
    `tolerance` times (a ratio in the baseline but not measured now fails too)."""
    failures = []
    for name, entry in sorted(current.items()):
        if name.endswith("exact_pct") and entry["value"] < 100:
            failures.append(f"{name} = {entry['value']:.2f} % (records must equal htslib's)")
    for name, base in sorted(baseline.items()):
        better = base.get("better")
        if not better:
            continue
        if name not in current:
            failures.append(f"{name}: in the baseline, not measured")
            continue
        now, then = current[name]["value"], base["value"]
        if better == "higher" and now * tolerance < then:
            failures.append(f"{name} = {now:.3g}, baseline {then:.3g} (higher is better; "
                            f"more than {tolerance:g}x worse)")
        if better == "lower" and now > then * tolerance:
            failures.append(f"{name} = {now:.3g}, baseline {then:.3g} (lower is better; "
                            f"more than {tolerance:g}x worse)")
    return failures
