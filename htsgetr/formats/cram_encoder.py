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
before the writers were kept). The check reads the output with a reader kept open too
(`Reader`): its scratch file starts with the file head, each output is appended to it and
exactly its records are read, so htslib never meets the file's end (which hFILE would
remember) and waits for no EOF container. A new reader would parse the header again on
every check: ~1.8 ms for GRCh38's 3,366 @SQ lines, ~120 ms for 200,000 scaffolds. Whatever
goes wrong with a kept reader (an error, or records that differ) is decided again by a
reader of its own, so a kept reader can cost time, never change an answer.

A kept writer whose output fails the check is closed, never reused, and the records are
written again by a writer of their own. A kept writer (or reader) is replaced once its file
holds `WRITER_BYTES` (the file is memory); at most `KEPT` writers and `KEPT` readers are
kept per worker, the least recently used closed first; one is used by one re-encoding at a
time (taken out of the pool meanwhile), and a forked child starts with none.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
from collections import OrderedDict
from typing import IO, Any, Generic, Hashable, Iterable, Optional, TypeVar

from .. import turns
from .cram_layout import Truncated, count_records

#: bytes a kept writer (or reader) may write (or read) past the header before it is replaced
WRITER_BYTES = 4 << 20
#: writers, and readers, kept open per worker (each a scratch file in memory)
KEPT = 4
#: bytes a file must hold when htslib opens it to read: it peeks at 1,024 of them to tell
#: the format (hts_detect_format2), and a peek that meets the end leaves the file at its
#: end for good (a kept reader is opened only past this)
PEEK_BYTES = 4096


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


class KeptFile:
    """An htslib file (`htsfile`) kept open on a scratch file by this process: spent once
    `WRITER_BYTES` have gone through it past the header (from `start` to `end`), or in a
    forked child."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.file = scratch()
        self.htsfile: Any = None
        self.start = self.end = 0

    @property
    def spent(self) -> bool:
        return self.end - self.start >= WRITER_BYTES or self.pid != os.getpid()

    def close(self) -> None:
        try:
            if self.htsfile is not None:
                self.htsfile.close()
        finally:
            self.file.close()


class Encoder(KeptFile):
    """A CRAM writer (`options`: htslib's, e.g. version and no_ref) whose containers are
    taken from its scratch file one re-encoding at a time."""

    def __init__(self, header: Any, options: list[str]) -> None:
        import pysam

        super().__init__()
        try:
            self.htsfile = pysam.AlignmentFile(self.file.fileno(), "wc", header=header,
                                               format_options=[*options, "block_size=1"])
            self.htsfile.flush()  # the file definition and header container: not ours
            self.end = self.start = os.fstat(self.file.fileno()).st_size
        except BaseException:
            self.close()
            raise

    def encode(self, records: Iterable[Any]) -> bytes:
        """The data containers holding `records`, in order (b"" for none)."""
        for record in records:
            self.htsfile.write(record)
        self.htsfile.flush()
        fd = self.file.fileno()
        end = os.fstat(fd).st_size
        out = os.pread(fd, end - self.end, self.end)
        self.end = end
        return out


class Reader(KeptFile):
    """A CRAM reader kept open on a scratch file that starts with a file head: each output
    appended to it is read back, exactly its records, so htslib never meets the file's end
    (hFILE would remember that it had). Opened on the head and a first output together:
    htslib peeks at the first `PEEK_BYTES` of a file to tell its format."""

    def __init__(self, head: bytes, first: bytes) -> None:
        import pysam

        super().__init__()
        try:
            os.pwrite(self.file.fileno(), head + first, 0)
            self.start = len(head)
            self.end = len(head) + len(first)
            self.htsfile = pysam.AlignmentFile(self.file.fileno(), "rc", check_sq=False)
            self.iterator = self.htsfile.fetch(until_eof=True)
        except BaseException:
            self.close()
            raise

    def append(self, out: bytes) -> None:
        """One more output (whole data containers) to read."""
        os.pwrite(self.file.fileno(), out, self.end)
        self.end += len(out)

    def records(self, n: int) -> list[Any]:
        """The next `n` records (fewer if htslib met the file's end: then it is spent)."""
        return list(itertools.islice(self.iterator, n))


K = TypeVar("K", bound=KeptFile)


class Pool(Generic[K]):
    """Kept writers (or readers) by what they are for (the header and version), least
    recently used first."""

    def __init__(self, kept: int = KEPT) -> None:
        self.kept = kept
        self._free: OrderedDict[Hashable, list[K]] = OrderedDict()
        self._count = 0
        self._lock = threading.Lock()

    def take(self, key: Hashable) -> Optional[K]:
        """A kept one for `key`, now out of the pool, or None."""
        with self._lock:
            free = self._free.get(key)
            if not free:
                return None
            one = free.pop()
            self._count -= 1
            if not free:
                del self._free[key]
        if one.pid != os.getpid():  # (not ours: see `forget`)
            return None
        return one

    def give(self, key: Hashable, one: K) -> None:
        """Keep `one` for the next use for `key` (or close it: spent, or one too many)."""
        if one.spent:
            one.close()
            return
        dropped: list[K] = []
        with self._lock:
            self._free.setdefault(key, []).append(one)
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
        """Close every one kept."""
        with self._lock:
            kept = [k for free in self._free.values() for k in free]
            self._free.clear()
            self._count = 0
        for one in kept:
            one.close()

    def forget(self) -> None:
        """In a forked child: drop the parent's writers and readers unused and unclosed
        (closing a writer writes an EOF container into a scratch file the parent shares).
        They stay referenced until the child exits. htsgetr does not fork once it
        re-encodes (gunicorn's master serves nothing); were it to, what the child's exit
        writes could only spoil a later output of the parent's writer, which the parent's
        check refuses (see above)."""
        with self._lock:
            _FORSAKEN.extend(e for free in self._free.values() for e in free)
            self._free.clear()
            self._count = 0


#: the writers and readers a forked child inherited (see `Pool.forget`)
_FORSAKEN: list[KeptFile] = []

#: this process's kept writers
POOL: Pool[Encoder] = Pool()
#: this process's kept readers (of the check), by file head
READERS: Pool[Reader] = Pool()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=POOL.forget)
    os.register_at_fork(after_in_child=READERS.forget)


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
    back, or None. Read by a kept reader (`Reader`); what it finds wrong, by a new one."""
    import pysam

    try:
        written = count_records(out, 0, len(out), major)
        if written != len(kept):
            return f"re-encoding failed ({written} records written of {len(kept)})"
    except (ValueError, Truncated) as exc:
        return f"re-encoding failed ({exc})"
    reader = READERS.take(head)
    try:
        if reader is not None:
            reader.append(out)
        elif len(head) + len(out) >= PEEK_BYTES:
            reader = Reader(head, out)
        if reader is not None and kept and _same_records(reader.records(len(kept)), kept):
            READERS.give(head, reader)
            return None
    except (OSError, ValueError):
        pass
    except BaseException:
        if reader is not None:
            reader.close()
        raise
    if reader is not None:
        reader.close()
    try:
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
