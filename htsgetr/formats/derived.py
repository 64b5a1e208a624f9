"""Derived blocks: re-cut data served through /data instead of inline, so tickets stay small.

A re-encoded CRAM container (cram_recode.py) or a re-cut BGZF edge block (part of one block
of a BAM, VCF or BCF, blocks.py) goes in the ticket as a `data:` url while the ticket's
inline budget (`max_inline_bytes`, counted as the text of its data: urls) lasts; past it, it
becomes a url of our /data endpoint that names everything needed to compute the same bytes
again in any worker:

    /data/~~cram/<version tag>/<container start>-<end>/<selection>/<data path of the file>
    /data/~~bgzf/<version tag>/<block start>-<end>/<ubeg>-<uend>/<data path of the file>

- BGZF: the block [start, end) of the file (its BSIZE must say so) and the bytes
  [ubeg, uend) of its inflated payload, compressed again as one BGZF block;

- version tag: a hash of the storage's version of the file (mtime/size/inode, ETag); a file
  changed since the ticket is refused (404), never re-cut from other bytes;
- start-end: the container, which must be one the file's CRAI indexes (end: the next one);
- selection: the wanted intervals as they bear on that container (cram_recode.Selection,
  clipped to the container's span, in its one canonical spelling);
- the file's path below /data/, as its byte-range urls have it (`~mount/key`, or `key`).

"~~" is no mount name (names start with a letter or are digits), so these paths never meet
a stored key. With auth on, the url is signed like every /data url (the signature covers the
whole path); without auth it still names only work a ticket could have asked for — one
container of a file a location serves, re-cut once per worker and cached.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

from .. import turns
from ..protocol import Class, PermissionDenied
from .base import Inline, Piece

#: first segment of a derived CRAM block's path below /data/
CRAM_PREFIX = "~~cram"
#: first segment of a derived BGZF edge block's path below /data/
BGZF_PREFIX = "~~bgzf"
#: what a data: url adds to its payload's base64 text
DATA_URI_PREFIX = len("data:;base64,")
#: longest selection spelling accepted in a derived url
MAX_TOKEN = 8192
#: longest derived path below /data/ (percent-encoded) a ticket names: gunicorn reads request
#: lines of up to 4094 bytes, the signature takes ~70; a re-cut whose selection is too long
#: for it (a POST of hundreds of regions inside one container) stays inline
MAX_PATH = 3072

_TAG = re.compile(r"[0-9a-f]{16}")
_SPAN = re.compile(r"(0|[1-9][0-9]{0,14})-([1-9][0-9]{0,14})")


@dataclass(frozen=True)
class Recut(Inline):
    """A re-encoded container `[start, end)` of the file: its wanted records (`data`) for the
    selection spelled `token`. Inline, or a derived block once the ticket's budget is spent."""

    start: int = 0
    end: int = 0
    token: str = ""

    #: first segment of its derived path
    prefix = CRAM_PREFIX


def _nothing() -> Optional[Piece]:
    return None


@dataclass(frozen=True)
class Deferred(Recut):
    """A CRAM container's re-cut the ticket did not compute (past its re-encoding budget):
    a derived block, computed when its url is fetched. `compute()` makes it now where its
    url would be too long: the `Recut`, the whole container (`ByteRange`, when it cannot be
    re-encoded and the ticket allows it), or None (no wanted record); PermissionDenied where
    it allows no whole container. `whole`: what a ticket with no urls of ours (Crypt4GH)
    sends instead, the container as it is stored, or None where that is not allowed."""

    compute: Callable[[], Optional[Piece]] = field(default=_nothing, compare=False, repr=False)
    whole: Optional[Piece] = field(default=None, compare=False, repr=False)


#: why a restricted CRAM query is refused (a container it would have to send whole)
REFUSED = "this CRAM region cannot be restricted to the record: "


def undeferred(pieces: Sequence[Piece]) -> list[Piece]:
    """`pieces` for a ticket with no derived blocks (Crypt4GH: its bytes are all encrypted
    here), each `Deferred` re-cut as its whole container, or PermissionDenied where that is
    not allowed (a restricted query): the re-encoding budget holds for it too."""
    out: list[Piece] = []
    for p in pieces:
        if isinstance(p, Deferred):
            if p.whole is None:
                raise PermissionDenied(
                    REFUSED + "more containers to re-encode than one ticket may")
            out.append(p.whole)
        else:
            out.append(p)
    return out


def _settled(pieces: Sequence[Part], derivable: Callable[[Recut], bool]) -> list[Part]:
    """`pieces` with each `Deferred` re-cut a `Derived` block where `derivable`, else
    computed now."""
    out: list[Part] = []
    for p in pieces:
        if not isinstance(p, Deferred):
            out.append(p)
        elif derivable(p):
            out.append(Derived(p))
        else:
            made = p.compute()
            if made is not None:
                out.append(made)
    return out


@dataclass(frozen=True)
class Edge(Recut):
    """Bytes `[ubeg, uend)` of the payload of the BGZF block `[start, end)`, compressed
    again (`data`): the partial block at either end of a chunk. `token` spells the span."""

    prefix = BGZF_PREFIX

    @classmethod
    def of(cls, data: bytes, klass: Class, start: int, end: int, ubeg: int, uend: int) -> Edge:
        return cls(data, klass, start, end, f"{ubeg}-{uend}")

    @property
    def payload_span(self) -> tuple[int, int]:
        ubeg, _, uend = self.token.partition("-")
        return int(ubeg), int(uend)


@dataclass(frozen=True)
class Derived:
    """A re-cut served through /data: the engine turns it into a url (see `derived_path`)."""

    recut: Recut

    @property
    def klass(self) -> Class:
        return self.recut.klass


Part = Union[Piece, Derived]


#: JSON characters of a ticket entry around its data: url: `{"url": "", "class": "body"}, `
INLINE_ENTRY = 32


def inline_size(n: int) -> int:
    """Characters of the data: url of an `n`-byte payload."""
    return DATA_URI_PREFIX + 4 * ((n + 2) // 3)


#: generous JSON characters of one non-inline ticket entry (a presigned S3 url with its
#: headers included), for the cheap check that a ticket is far inside its budget
ENTRY_BOUND = 4096


def bound_inline(
    pieces: Sequence[Part],
    limit: int,
    entry_chars: Callable[[Part], int],
    derivable: Callable[[Recut], bool] = lambda recut: True,
) -> list[Part]:
    """`pieces` with the re-cuts (CRAM containers, BGZF edges) that would take the ticket's
    JSON past `limit` characters as `Derived` blocks, the smallest inlined first; adjacent
    inline CRAM re-cuts joined in one data: url. `entry_chars(part)` is the JSON size of a
    non-inline part's ticket entry (a byte range, a derived block). Other inline pieces (EOF
    markers, re-cut headers) and re-cuts that are not `derivable` stay inline and count
    first."""
    inline_chars = others = 0
    at: set[int] = set()  # where the re-cuts are
    for i, p in enumerate(pieces):
        if not isinstance(p, Inline):
            others += 1
            continue
        if isinstance(p, Deferred):
            return bound_inline(_settled(pieces, derivable), limit, entry_chars, derivable)
        inline_chars += INLINE_ENTRY + inline_size(len(p.data))
        if isinstance(p, Recut):
            at.add(i)
    if inline_chars + ENTRY_BOUND * others <= limit:  # the common ticket: far inside it
        return _joined(pieces, at)
    recuts: dict[int, Recut] = {}
    for i in sorted(at):
        recut = pieces[i]
        if isinstance(recut, Recut) and derivable(recut):
            recuts[i] = recut
    if not recuts:
        return _joined(pieces, at)
    derived = {i: Derived(p) for i, p in recuts.items()}
    used = 0
    for i, p in enumerate(turns.paced(pieces)):
        if i in derived:
            used += entry_chars(derived[i])
        elif isinstance(p, Inline):
            used += INLINE_ENTRY + inline_size(len(p.data))
        else:
            used += entry_chars(p)
    inline = at - recuts.keys()
    for i in turns.paced(sorted(recuts, key=lambda i: (len(recuts[i].data), i))):
        cost = INLINE_ENTRY + inline_size(len(recuts[i].data)) - entry_chars(derived[i])
        if used + cost <= limit:
            inline.add(i)
            used += cost
    return _joined([derived[i] if i in derived and i not in inline else p
                    for i, p in enumerate(pieces)], inline)


def _joined(parts: Sequence[Part], inline: set[int]) -> list[Part]:
    """`parts` with the re-cuts at `inline` (CRAM containers, BGZF edges) as plain inline
    pieces, adjacent ones joined in one data: url: a region whose records are interleaved
    with others' (long or spliced reads) has a run of records, and two edges, per gap,
    often several in one block — one ticket entry for them, not one per edge."""
    if not inline:
        return list(parts)
    out: list[Part] = []
    run: list[bytes] = []  # the data of adjacent inline re-cuts of one class, to join
    klass = Class.BODY
    for i, p in enumerate(parts):
        data = p.data if i in inline and isinstance(p, Recut) else None
        if run and (data is None or p.klass != klass):
            out.append(Inline(b"".join(run), klass))
            run = []
        if data is None:
            out.append(p)
        else:
            run.append(data)
            klass = p.klass
    if run:
        out.append(Inline(b"".join(run), klass))
    return out


def version_tag(version: str) -> str:
    """The version of a file as a derived url names it."""
    return hashlib.sha256(version.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def derived_path(data_path: str, version: str, recut: Recut) -> str:
    """The path below /data/ of a derived block (not yet percent-encoded)."""
    return (
        f"{recut.prefix}/{version_tag(version)}/{recut.start}-{recut.end}/{recut.token}/"
        f"{data_path}"
    )


@dataclass(frozen=True)
class DerivedRef:
    """A parsed derived path: what to re-cut (`prefix`: CRAM or BGZF), of which file and
    version."""

    tag: str
    start: int
    end: int
    token: str
    data_path: str
    prefix: str = CRAM_PREFIX

    @property
    def payload_span(self) -> tuple[int, int]:
        """BGZF: the [ubeg, uend) the token spells (checked by parse_derived)."""
        ubeg, _, uend = self.token.partition("-")
        return int(ubeg), int(uend)


def is_derived(path: str) -> bool:
    return path.startswith((CRAM_PREFIX + "/", BGZF_PREFIX + "/"))


def parse_derived(path: str) -> Optional[DerivedRef]:
    """The parts of a derived path, or None unless it is spelled as `derived_path` spells
    it (numbers without leading zeros, a 16-hex-digit tag, a bounded selection; BGZF: a
    payload span inside 64 KiB)."""
    parts = path.split("/", 4)
    if len(parts) != 5 or parts[0] not in (CRAM_PREFIX, BGZF_PREFIX):
        return None
    prefix, tag, span, token, data_path = parts
    m = _SPAN.fullmatch(span)
    if not _TAG.fullmatch(tag) or m is None or not token or len(token) > MAX_TOKEN:
        return None
    start, end = int(m.group(1)), int(m.group(2))
    if end <= start or not data_path:
        return None
    if prefix == BGZF_PREFIX:
        u = _SPAN.fullmatch(token)
        if u is None or not int(u.group(1)) < int(u.group(2)) <= 1 << 16:
            return None
    return DerivedRef(tag, start, end, token, data_path, prefix)
