"""Plaintext byte ranges <-> encrypted segments.

Segment i holds plaintext `[i * SEGMENT, (i + 1) * SEGMENT)` (the last one may be shorter)
and is stored at `[header + i * CIPHER_SEGMENT, header + (i + 1) * CIPHER_SEGMENT)` (the
last one: to the end of the object), as nonce + ciphertext + MAC.
"""

from __future__ import annotations

from .header import CIPHER_SEGMENT, SEGMENT


def segment_span(start: int, end: int) -> tuple[int, int]:
    """The segments `[first, last)` holding plaintext `[start, end)` (end > start)."""
    return start // SEGMENT, -(-end // SEGMENT)


def cipher_range(first: int, last: int, header_length: int, cipher_size: int
                 ) -> tuple[int, int]:
    """Stored bytes of segments `[first, last)`."""
    return (header_length + first * CIPHER_SEGMENT,
            min(cipher_size, header_length + last * CIPHER_SEGMENT))


def plain_range(first: int, last: int, plain_size: int) -> tuple[int, int]:
    """Plaintext bytes segments `[first, last)` decrypt to."""
    return first * SEGMENT, min(plain_size, last * SEGMENT)


def segment_count(plain_size: int) -> int:
    return -(-plain_size // SEGMENT)
