"""Writing re-encoded CRAM containers (for cram_recode.py): scratch files in memory,
writers kept open from one re-encoding to the next, and the check every output passes
(`write_checked`).

Why kept open: htslib's CRAM encoder, new, tries every codec it may use (gzip, gzip RLE,
rANS order 0 and 1 at level 1) on every block of its first containers, and only then keeps
the best per data series; it tries them again every ~70 containers. A writer opened for
each re-encoding pays those trials every time: ~8 us a record, two thirds of it trials. A
writer kept open encodes each later container once, with the codecs its trials chose
(measured: 4.0 against 10.9 ms for 60 random regions' records, bytes +0.4 %).

How a kept writer's output is cut: each re-encoding writes its records, then
`AlignmentFile.flush` makes htslib end the container (`cram_flush`) and write it; the file
is opened with `block_size=1`, so htslib's hFILE buffers none of it (its flush does not
flush that buffer) and the container's bytes are all in the scratch file when `flush`
returns, from where the last one ended. Containers need nothing of the ones before them to
be read (each has its own compression header; CRAMv3 7-8); their record counters run on
from the writer's earlier containers, as those of a writer's own file would, which readers
do not check (names are stored, never made from the counter).

Each output is checked (`write_checked`: whole containers, every record read back equal, as
before the writers were kept). A kept writer whose output fails the check is closed, never
reused, and the records are written again by a writer of their own. A kept writer is
replaced once its file holds `WRITER_BYTES` (the file is memory); at most `KEPT` writers
are kept per worker, the least recently used closed first; one is used by one re-encoding
at a time (taken out of the pool meanwhile), and a forked child starts with none.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
from collections import OrderedDict
from typing import IO, Any, Hashable, Iterable, Optional

from .. import turns
from .cram_layout import Truncated, count_records

#: bytes a kept writer's scratch file may hold before the writer is replaced
WRITER_BYTES = 4 << 20
#: writers kept open per worker (each a scratch file of up to WRITER_BYTES, in memory)
KEPT = 4


def scratch() -> IO[bytes]:
    """An anonymous read-write file for htslib to decode from or encode into: in memory
    (memfd_create, Linux), so the records of a container never reach a disk and closing
    a writer syncs nothing (htslib's close calls fdatasync: on a real disk, milliseconds
    a container); else an unlinked temporary file."""
    make = getattr(os, "memfd_create", None)
    if make is not None:
        try:
            return open(make("htsgetr-cram", os.MFD_CLOEXEC), "w+b")
        except OSError:  # not allowed here (a sandbox's seccomp filter): a file will do
            pass
    return tempfile.TemporaryFile()


class Encoder:
    """A CRAM writer (`options`: htslib's, e.g. version and no_ref) whose containers are
    taken from its scratch file one re-encoding at a time."""

    def __init__(self, header: Any, options: list[str]) -> None:
        import pysam

        self.pid = os.getpid()
        self.file = scratch()
        self.writer = pysam.AlignmentFile(self.file.fileno(), "wc", header=header,
                                          format_options=[*options, "block_size=1"])
        try:
            self.writer.flush()  # the file definition and header container: not ours
            self.offset = os.fstat(self.file.fileno()).st_size
        except BaseException:
            self.close()
            raise

    def encode(self, records: Iterable[Any]) -> bytes:
        """The data containers holding `records`, in order (b"" for none)."""
        for record in records:
            self.writer.write(record)
        self.writer.flush()
        fd = self.file.fileno()
        end = os.fstat(fd).st_size
        out = os.pread(fd, end - self.offset, self.offset)
        self.offset = end
        return out

    @property
    def spent(self) -> bool:
        return self.offset >= WRITER_BYTES or self.pid != os.getpid()

    def close(self) -> None:
        try:
            writer = getattr(self, "writer", None)
            if writer is not None:
                writer.close()
        finally:
            self.file.close()


class Pool:
    """Kept writers by what they encode for (the header and version), least recently
    used first."""

    def __init__(self, kept: int = KEPT) -> None:
        self.kept = kept
        self._free: OrderedDict[Hashable, list[Encoder]] = OrderedDict()
        self._count = 0
        self._lock = threading.Lock()

    def take(self, key: Hashable) -> Optional[Encoder]:
        """A kept writer for `key`, now out of the pool, or None."""
        with self._lock:
            free = self._free.get(key)
            if not free:
                return None
            encoder = free.pop()
            self._count -= 1
            if not free:
                del self._free[key]
        if encoder.pid != os.getpid():  # (not ours: see `forget`)
            return None
        return encoder

    def give(self, key: Hashable, encoder: Encoder) -> None:
        """Keep `encoder` for the next re-encoding of `key` (or close it: spent, or one
        too many)."""
        if encoder.spent:
            encoder.close()
            return
        dropped: list[Encoder] = []
        with self._lock:
            self._free.setdefault(key, []).append(encoder)
            self._free.move_to_end(key)
            self._count += 1
            while self._count > self.kept:
                oldest = next(iter(self._free))
                dropped.append(self._free[oldest].pop(0))
                self._count -= 1
                if not self._free[oldest]:
                    del self._free[oldest]
        for old in dropped:
            old.close()

    def clear(self) -> None:
        """Close every kept writer."""
        with self._lock:
            kept = [e for free in self._free.values() for e in free]
            self._free.clear()
            self._count = 0
        for encoder in kept:
            encoder.close()

    def forget(self) -> None:
        """In a forked child: drop the parent's writers unused and unclosed (closing one
        writes an EOF container into a scratch file the parent shares). They stay referenced
        until the child exits. htsgetr does not fork once it re-encodes (gunicorn's master
        serves nothing); were it to, what the child's exit writes could only spoil a later
        output of the parent's writer, which the parent's check refuses (see above)."""
        with self._lock:
            _FORSAKEN.extend(e for free in self._free.values() for e in free)
            self._free.clear()
            self._count = 0


#: the writers a forked child inherited (see `Pool.forget`)
_FORSAKEN: list[Encoder] = []

#: this process's kept writers
POOL = Pool()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=POOL.forget)


class EncodingFailed(Exception):
    """The records could not be written as CRAM that reads back the same."""


def write_checked(kept: list[Any], header: Any, head: bytes, version: tuple[int, int],
                  eof: bytes, canonical: bool) -> bytes:
    """Data containers (CRAM `version`, no_ref) holding `kept`, checked: whole containers of
    exactly those records, read back equal behind `head` (a file definition and header
    container) and before `eof`. `canonical`: by a new writer; else by a kept one for this
    header and version, and one whose output fails is closed and the records written again
    by a new one. EncodingFailed if a new writer's output fails."""
    major, minor = version
    key = (version, head)
    encoder = None if canonical else POOL.take(key)
    retry = encoder is not None
    while True:
        try:
            if encoder is None:
                encoder = Encoder(header, ["no_ref=1", f"version={major}.{minor}", "level=1"])
            out = encoder.encode(kept)
            turns.pause()
            failure = _check(out, kept, head, eof, major)
        except (OSError, ValueError) as exc:
            failure = f"re-encoding failed ({exc})"
        except BaseException:  # (a deadline while it paused): the writer is not kept
            if encoder is not None:
                encoder.close()
            raise
        if failure is None and encoder is not None:
            if canonical:
                encoder.close()
            else:
                POOL.give(key, encoder)
            return out
        if encoder is not None:
            encoder.close()
        if not retry:
            raise EncodingFailed(failure or "re-encoding failed")
        encoder, retry = None, False


def _check(out: bytes, kept: list[Any], head: bytes, eof: bytes, major: int) -> Optional[str]:
    """Why `out` is not whole data containers holding exactly `kept` as htslib reads them
    back, or None."""
    import pysam

    try:
        written = count_records(out, 0, len(out), major)
        if written != len(kept):
            return f"re-encoding failed ({written} records written of {len(kept)})"
        with scratch() as again:
            again.write(head)
            again.write(out)
            again.write(eof)
            again.flush()
            again.seek(0)
            with pysam.AlignmentFile(again.fileno(), "rc", check_sq=False) as check:
                same = _same_records(check.fetch(until_eof=True), kept)
    except (OSError, ValueError, Truncated) as exc:
        return f"re-encoding failed ({exc})"
    return None if same else "re-encoding changed its records"


def _same_records(again: Iterable[Any], kept: list[Any]) -> bool:
    """The records read back from the re-encoding are `kept`, in order: equal as htslib
    holds them in memory (compared in C), or else in their SAM text."""
    return all(a is not None and b is not None and (a == b or a.to_string() == b.to_string())
               for a, b in itertools.zip_longest(again, kept))
