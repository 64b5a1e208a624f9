"""Mode 1 (`encryptionScheme=C4GH`): the ticket post-step.

The format handler computed the plaintext pieces exactly as for a plain file: byte ranges
of the (plaintext) file and server-made inline pieces (a re-cut header block, re-cut edge
blocks, the EOF marker, CRAM re-cuts). Here they become:

- a first `data:` block: a new Crypt4GH header for the client's public key, holding the
  stored file's session key(s), a fresh session key for the server-made pieces (when
  there are any), and ONE edit list packet (alternating skip / keep lengths over the
  decrypted stream) that trims the decrypted stream to exactly the plaintext pieces;
- for each run of byte ranges: the whole stored segments holding it, fetched from storage
  as they are (/data for local files, S3 presigned urls, ...). Ranges whose segments
  overlap or touch share one run; the edit list skips the bytes between them;
- for each run of server-made pieces: their bytes encrypted in `data:` blocks under the
  fresh key, in full 65,536-byte segments (zero-padded, the padding skipped by the edit
  list): a decryptor reads ciphertext in fixed 65,564-byte steps, so a short segment may
  only end the stream. For the same reason the stored file's last segment, when short,
  is re-encrypted as a server-made piece unless nothing follows it.

`crypt4gh decrypt --sk client.sec` of the reassembled payload is then the plaintext ticket's
payload byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from ..formats.base import ByteRange, Inline, Piece, Source
from ..protocol import Block, Class, Query, Ticket, data_uri
from .header import SEGMENT, encrypt_segment, make_header, new_session_key
from .segments import cipher_range, segment_span
from .storage import Crypt4ghStorage, Stored


@dataclass
class _Cipher:
    """Stored segments `[first, last)` and the plaintext intervals kept from them."""

    first: int
    last: int
    keeps: list[tuple[int, int]]
    classes: set[Optional[Class]]


@dataclass
class _Made:
    data: bytearray = field(default_factory=bytearray)
    classes: set[Optional[Class]] = field(default_factory=set)


Run = Union[_Cipher, _Made]


def _runs(storage: Crypt4ghStorage, source: Source, obj: Stored, pieces: list[Piece]
          ) -> list[Run]:
    """The pieces as runs of stored segments and of server-made bytes, in stream order."""
    size = obj.size
    short_tail = size % SEGMENT != 0
    tail_start = size - size % SEGMENT  # the short last segment starts here
    content = [p for p in pieces if (p.end > p.start if isinstance(p, ByteRange) else p.data)]
    runs: list[Run] = []

    def made(data: bytes, klass: Optional[Class]) -> None:
        last = runs[-1] if runs else None
        if isinstance(last, _Made):  # one run, whatever the classes: padding only between
            last.data += data
            last.classes.add(klass)
        else:
            runs.append(_Made(bytearray(data), {klass}))

    for n, piece in enumerate(content):
        if isinstance(piece, Inline):
            made(piece.data, piece.klass)
            continue
        start, end = piece.start, min(piece.end, size)
        if end <= start:
            continue
        final = n == len(content) - 1
        cut = None
        if short_tail and end > tail_start and not final:
            cut = max(start, tail_start)
        stored_end = end if cut is None else cut
        if stored_end > start:
            first, last = segment_span(start, stored_end)
            prev = runs[-1] if runs else None
            if (isinstance(prev, _Cipher) and prev.first <= first <= prev.last
                    and start >= prev.keeps[-1][1]):
                prev.last = max(prev.last, last)
                prev.keeps.append((start, stored_end))
                prev.classes.add(piece.klass)
            else:
                runs.append(_Cipher(first, last, [(start, stored_end)], {piece.klass}))
        if cut is not None:
            made(source.read(cut, end), piece.klass)
    return runs


def _normal(ops: list[tuple[bool, int]]) -> list[int]:
    """(keep?, length) operations as an edit list: skip, keep, skip, ..., keep."""
    out: list[int] = []
    keep_next = False  # the list starts with a skip
    for keep, n in ops:
        if n <= 0:
            continue
        if keep != keep_next:  # same kind as the last entry: add to it
            if out:
                out[-1] += n
                continue
            out.append(0)  # a leading keep: skip nothing first
            keep_next = not keep_next
        out.append(n)
        keep_next = not keep_next
    if out and len(out) % 2:  # a trailing skip: the stream ends at the last keep
        out.pop()
    return out


def encrypted_ticket(storage: Crypt4ghStorage, source: Source, query: Query,
                     pieces: list[Piece], recipient: bytes) -> Ticket:
    """The mode-1 ticket of `pieces` (see the module docstring)."""
    obj = storage.stored(source.key)
    assert obj.header is not None
    runs = _runs(storage, source, obj, pieces)
    fresh = new_session_key() if any(isinstance(r, _Made) for r in runs) else None
    ops: list[tuple[bool, int]] = []
    blocks: list[Block] = []
    # a block's class is its pieces' one class; a block mixing them: no class anywhere
    # (the spec allows class on every entry or on none)
    classed = all(len(r.classes) == 1 for r in runs)

    def klass(run: Run) -> Optional[Class]:
        return next(iter(run.classes)) if classed else None

    for i, run in enumerate(runs):
        if isinstance(run, _Cipher):
            pos = run.first * SEGMENT
            for start, end in run.keeps:
                ops += [(False, start - pos), (True, end - start)]
                pos = end
            ops.append((False, min(run.last * SEGMENT, obj.size) - pos))
            a, b = cipher_range(run.first, run.last, obj.header.length, obj.cipher_size)
            url, headers = storage.cipher_url(obj.key, a, b)
            blocks.append(Block(url, headers, klass(run)))
            continue
        assert fresh is not None
        data = bytes(run.data)
        final = i == len(runs) - 1
        sealed = []
        for pos in range(0, len(data), SEGMENT):
            chunk = data[pos:pos + SEGMENT]
            if len(chunk) < SEGMENT and not final:
                chunk += bytes(SEGMENT - len(chunk))
            sealed.append(encrypt_segment(chunk, fresh))
        padded = -len(data) % SEGMENT if not final else 0
        ops += [(True, len(data)), (False, padded)]
        blocks.append(Block(data_uri(b"".join(sealed)), None, klass(run)))
    keys = list(obj.header.session_keys) + ([fresh] if fresh is not None else [])
    edits = _normal(ops)
    header = make_header(keys, edits, storage.keys.secret, recipient)
    classes = any(b.klass is not None for b in blocks)
    head = Block(data_uri(header), None, Class.HEADER if classes else None)
    return Ticket(query.format, [head, *blocks])
