"""Reference sequences for decoding reference-based CRAM containers, from trusted places only.

A boundary container is decoded (and re-encoded without a reference, cram_recode.py) by
htslib. A reference-based container needs the reference it was written against; the server
uses one only when it is found in a directory of the configuration's `cram_reference_path`:

- the FASTA the file's `@SQ UR:` names, when that path (plain or `file:`) lies inside one of
  the directories, or, for any UR (a path elsewhere, an ftp/http URL), a file of the same
  name directly in one of them (`UR:ftp://.../hs37d5.fa.gz` -> `<dir>/hs37d5.fa.gz`); it
  must be indexed (`.fai`, and `.gzi` when compressed), since htslib would otherwise try to
  write an index beside it;
- else the sequences the `@SQ M5:` checksums name, in htslib's REF_CACHE layouts
  `<dir>/<m5>` or `<dir>/<m5[:2]>/<m5[2:4]>/<m5[4:]>` (what `seq_cache_populate.pl` writes),
  through htslib's REF_PATH, set to exactly those directories.

Nothing else is ever looked at: the header handed to htslib has no UR, and keeps M5 only
when directories are configured (htslib's default for M5, EBI's server, is never reached).
A wrong reference cannot slip through: htslib checks each slice's reference MD5.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional
from urllib.parse import unquote, urlsplit

#: htslib reads REF_PATH / REF_CACHE from the process environment at decode time: decodes that
#: rely on them hold this lock (same values in every thread but during a reload)
_ENV_LOCK = threading.Lock()


#: @SQ tags a container's decoding may need whatever else it lacks: the name (a FASTA's
#: sequences are found by it) and the length
SQ_CODING_TAGS = (b"SN:", b"LN:")


def coding_header(text: bytes, keep: Iterable[bytes] = ()) -> bytes:
    """The SAM header as far as a container's records depend on it when htslib decodes or
    encodes them: @HD; every @SQ, in order (a record's reference ID is its line's place),
    with only SN, LN and the tags in `keep` (b"M5:" for REF_PATH lookups); every @RG whole,
    in order (the RG data series is a line's place). No @PG or @CO: a real GRCh38 header is
    ~0.5 MB, mostly @SQ tags such as UR, AS and SP, which htslib would parse on each of the
    three opens of a re-cut."""
    wanted = SQ_CODING_TAGS + tuple(keep)
    lines = []
    for line in text.split(b"\n"):
        if line.startswith(b"@SQ\t"):
            fields = line.rstrip(b"\r").split(b"\t")
            lines.append(b"\t".join([fields[0], *(f for f in fields[1:] if f.startswith(wanted))]))
        elif line.startswith((b"@HD\t", b"@RG\t")):
            lines.append(line)
    return b"\n".join(lines) + b"\n" if lines else b""


def sq_tag(text: bytes, ref_id: int, tag: bytes) -> Optional[str]:
    """The value of `tag` (e.g. b"UR:") on the `ref_id`-th @SQ line, or None."""
    i = -1
    for line in text.split(b"\n"):
        if not line.startswith(b"@SQ\t"):
            continue
        i += 1
        if i == ref_id:
            for field in line.rstrip(b"\r").split(b"\t")[1:]:
                if field.startswith(tag):
                    return field[len(tag):].decode("utf-8", "replace")
            return None
    return None


@dataclass(frozen=True)
class Decoding:
    """How htslib is to decode one container: the header it sees, a FASTA (or None), and
    the REF_PATH for M5 lookups (or None: M5 tags are dropped)."""

    header_text: bytes
    fasta: Optional[str]
    ref_path: Optional[str]

    @property
    def nbytes(self) -> int:
        """What it weighs in a cache (its header text is the file's, cached once)."""
        return 512

    @contextmanager
    def environment(self) -> Iterator[None]:
        """REF_PATH set to the configured directories (and no REF_CACHE) while decoding;
        the process's own values back afterwards."""
        if self.ref_path is None:
            yield
            return
        with _ENV_LOCK:
            saved = {name: os.environ.get(name) for name in ("REF_PATH", "REF_CACHE")}
            os.environ["REF_PATH"] = self.ref_path
            os.environ["REF_CACHE"] = ""
            try:
                yield
            finally:
                for name, value in saved.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value


@dataclass(frozen=True)
class References:
    """The configured reference directories (absolute, no ':' or '%': REF_PATH syntax)."""

    dirs: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str:
        """Part of the cache key of a decoding outcome (a reference may make it succeed)."""
        return "|".join(self.dirs)

    @property
    def coding_tags(self) -> tuple[bytes, ...]:
        """The @SQ tags `coding_header` keeps besides SN and LN: M5 when there are
        directories to look references up in by it."""
        return (b"M5:",) if self.dirs else ()

    def decoding(self, text: bytes, ref_ids: Iterable[int], coding: bytes) -> Decoding:
        """The decoding of a container holding `ref_ids` of a file whose header is `text`
        (`coding`: its `coding_header(text, self.coding_tags)`, made once per file)."""
        if not self.dirs:
            return Decoding(coding, None, None)
        fasta = None
        for ref_id in sorted(set(ref_ids)):
            if ref_id >= 0:
                fasta = self.fasta_for(sq_tag(text, ref_id, b"UR:"))
                if fasta is not None:
                    break
        templates = []
        for d in self.dirs:
            templates += [f"{d}/%2s/%2s/%s", f"{d}/%s"]
        return Decoding(coding, fasta, ":".join(templates))

    def fasta_for(self, ur: Optional[str]) -> Optional[str]:
        """The indexed FASTA in a configured directory that a UR value names, or None."""
        if not ur:
            return None
        parts = urlsplit(ur)
        if parts.scheme in ("", "file"):
            path = unquote(parts.path) if parts.scheme else ur
            if os.path.isabs(path):
                real = os.path.realpath(path)
                for d in self.dirs:
                    if real.startswith(os.path.realpath(d) + os.sep) and _indexed(real):
                        return real
        name = os.path.basename(unquote(parts.path) if parts.scheme else ur)
        if not name or name.startswith("."):
            return None
        for d in self.dirs:
            candidate = os.path.join(d, name)
            if _indexed(candidate):
                return os.path.realpath(candidate)
        return None


def _indexed(path: str) -> bool:
    """A FASTA htslib can read without writing anything: its .fai (and .gzi) beside it."""
    if not os.path.isfile(path) or not os.path.isfile(path + ".fai"):
        return False
    return not path.endswith((".gz", ".bgz")) or os.path.isfile(path + ".gzi")


#: no directory: reference-based containers are never decoded
NO_REFERENCES = References()
