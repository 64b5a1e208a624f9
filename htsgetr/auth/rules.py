"""htsget-rs's restriction model: which IDs, references, formats and intervals a caller may read.

The document (`{"version": 1, "htsgetAuth": [{"location": ..., "rules": [...]}]}`) is a
whitelist. A rule whose location matches the ID with no `rules` opens the whole ID; otherwise
each rule opens `referenceName` (any, when absent) in `format` (any, when absent) over
`[start, end)` (0-based half-open, unbounded where absent). Unlike htsget-rs, which picks one
rule per query, the allowed set is the UNION of the matching rules, and a restricted ticket
holds no record outside it: the engine gets the allowed intervals on the `Query` and cuts to
the record.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Optional

from ..protocol import MAX_COORDINATE, UNPLACED, Class, Format, PermissionDenied, Query, Region

#: any reference (a rule without referenceName), as `Query.allowed` spells it
ANY_REFERENCE = ""

_RULE_KEYS = {"referenceName", "format", "start", "end"}
_GRANT_KEYS = {"location", "backend", "rules"}


@dataclass(frozen=True)
class Restriction:
    """One entry of `rules`: a reference (None: any), a format (None: any), an interval."""

    reference_name: Optional[str]
    format: Optional[Format]
    start: Optional[int]
    end: Optional[int]

    @property
    def unbounded(self) -> bool:
        return self.reference_name is None and self.start is None and self.end is None


@dataclass(frozen=True)
class Grant:
    """One entry of `htsgetAuth`: IDs by exact id, prefix or regex, and what they open."""

    kind: str  # id | prefix | regex
    pattern: str
    rules: Optional[tuple[Restriction, ...]]  # None: everything in the matching IDs
    raw: Any = None  # the entry as received, echoed in the `allowed` hint

    def matches(self, id: str) -> bool:
        if self.kind == "id":
            return id == self.pattern
        if self.kind == "prefix":
            return id.startswith(self.pattern)
        return re.fullmatch(self.pattern, id) is not None


def _int(value: Any, where: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COORDINATE:
        raise ValueError(f"{where}: expected an integer between 0 and {MAX_COORDINATE}")
    return value


def _restriction(item: Any, where: str) -> Restriction:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected an object")
    extra = set(item) - _RULE_KEYS
    if extra:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
    name = item.get("referenceName")
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"{where}.referenceName: expected a non-empty string")
    fmt = item.get("format")
    if fmt is not None:
        try:
            fmt = Format(str(fmt).upper())
        except ValueError:
            raise ValueError(f"{where}.format: unknown format {fmt!r}") from None
    start, end = _int(item.get("start"), f"{where}.start"), _int(item.get("end"), f"{where}.end")
    if start is not None and end is not None and start >= end:
        raise ValueError(f"{where}: start must be less than end")
    return Restriction(name, fmt, start, end)


def _grant(entry: Any, where: str) -> Grant:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object")
    extra = set(entry) - _GRANT_KEYS
    if extra:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
    location = entry.get("location", entry.get("backend"))
    if not isinstance(location, dict):
        raise ValueError(f"{where}.location: expected an object with id, prefix or regex")
    given = [k for k in ("id", "prefix", "regex") if location.get(k) is not None]
    if len(given) != 1 or not isinstance(location[given[0]], str):
        raise ValueError(f"{where}.location: give exactly one of id, prefix, regex (a string)")
    kind, pattern = given[0], location[given[0]]
    if kind == "regex":
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"{where}.location.regex: {err}") from None
    rules = entry.get("rules")
    if rules is None:
        return Grant(kind, pattern, None, entry)
    if not isinstance(rules, list):
        raise ValueError(f"{where}.rules: expected a list")
    parsed = tuple(_restriction(r, f"{where}.rules[{i}]") for i, r in enumerate(rules))
    return Grant(kind, pattern, parsed, entry)


def parse_restrictions(doc: Any) -> list[Grant]:
    """The grants of a restrictions document; ValueError says what is wrong (and where)."""
    if not isinstance(doc, dict):
        raise ValueError("restrictions: expected a JSON object")
    extra = set(doc) - {"version", "htsgetAuth"}
    if extra:
        raise ValueError(f"restrictions: unknown key(s) {', '.join(sorted(extra))}")
    version = doc.get("version")
    if version != 1:
        raise ValueError(f"restrictions: version must be 1, got {version!r}")
    entries = doc.get("htsgetAuth")
    if not isinstance(entries, list) or not entries:
        raise ValueError("restrictions: htsgetAuth must be a non-empty list")
    return [_grant(e, f"htsgetAuth[{i}]") for i, e in enumerate(entries)]


# --------------------------------------------------------------------------- decisions


def _span(start: Optional[int], end: Optional[int]) -> tuple[int, int]:
    return start or 0, MAX_COORDINATE + 1 if end is None else end


def covered(region: Region, allowed: tuple[Region, ...]) -> bool:
    """Is every position of `region` inside the union of `allowed` on its reference?"""
    if region.reference_name == UNPLACED:
        return any(a.reference_name == UNPLACED for a in allowed)
    spans = sorted(
        _span(a.start, a.end)
        for a in allowed
        if a.reference_name in (region.reference_name, ANY_REFERENCE)
    )
    pos, end = _span(region.start, region.end)
    for beg, stop in spans:
        if beg > pos:
            break
        pos = max(pos, stop)
        if pos >= end:
            return True
    return pos >= end


@dataclass(frozen=True)
class Decision:
    """What a caller may have of one query: the query to run, and the rules that applied."""

    query: Query
    grants: tuple[Grant, ...]  # the matching grants (for the `allowed` hint)
    restricted: bool  # the ticket is limited to query.allowed


def decide(query: Query, grants: list[Grant], suppress_errors: bool = False) -> Decision:
    """Check `query` against the whitelist; raise PermissionDenied, or return the query with
    `allowed` set when only part of the ID is open. With `suppress_errors` a request reaching
    outside the rules gets the allowed part (possibly only the header) instead of 403."""
    matching = tuple(g for g in grants if g.matches(query.id))
    if not matching:
        raise PermissionDenied(f"not authorized for ID {query.id!r}")
    if any(g.rules is None for g in matching) or query.klass is Class.HEADER:
        return Decision(query, matching, False)
    rules = [
        r for g in matching for r in g.rules or () if r.format in (None, query.format)
    ]
    if any(r.unbounded for r in rules):
        return Decision(query, matching, False)
    allowed = tuple(
        Region(r.reference_name or ANY_REFERENCE, r.start, r.end) for r in rules
    )
    if not suppress_errors:
        if query.regions is None:
            raise PermissionDenied(
                f"not authorized for the whole of {query.id!r}: ask for an allowed region"
            )
        for region in query.regions:
            if not covered(region, allowed):
                raise PermissionDenied(f"not authorized for {_describe(region)} of {query.id!r}")
    return Decision(dataclasses.replace(query, allowed=allowed), matching, True)


def _describe(region: Region) -> str:
    if region.start is None and region.end is None:
        return f"reference {region.reference_name!r}"
    start, end = _span(region.start, region.end)
    return f"{region.reference_name}:{start}-{min(end, MAX_COORDINATE)}"


def hint(decision: Decision) -> list[Any]:
    """The `allowed` field of a suppressed ticket: the matching rules as received."""
    return [g.raw for g in decision.grants]
