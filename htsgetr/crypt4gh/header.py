"""Crypt4GH headers: parse a stored one (bounded, strict), make a client's one.

A header is `crypt4gh` + version 1 + a packet count, then packets, each a 4-byte length
(itself included) and an encrypted packet: method 0 (X25519 + ChaCha20-Poly1305), the
writer's public key, a nonce, the encrypted content and its MAC. A content is a data
encryption parameters packet (type 0: method 0 + a 32-byte session key) or an edit list
(type 1: a count, then alternating skip / keep lengths over the decrypted stream).

Stored files are refused (`Crypt4ghError`, an htsget InternalError naming the object) when
their header is larger than `[crypt4gh] max_header_bytes`, malformed, carries an edit list
(serving slices of an already edited stream is not supported), a packet type or data
encryption method this server does not know, or no packet the server's key opens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

from crypt4gh import sodium
from crypt4gh.header import encrypt_X25519_Chacha20_Poly1305

from ..protocol import InternalError

MAGIC = b"crypt4gh"
VERSION = 1
SEGMENT = 65536  # plaintext bytes per segment
CIPHER_DIFF = 28  # 12-byte nonce + 16-byte MAC
CIPHER_SEGMENT = SEGMENT + CIPHER_DIFF
PACKET_DATA_ENC = 0
PACKET_EDIT_LIST = 1
#: first read of a stored header (most are ~124 bytes per recipient); more when it says so
FIRST_READ = 4096


class Crypt4ghError(InternalError):
    """A stored Crypt4GH object this server will not serve (a clear 500, never plaintext)."""


@dataclass(frozen=True)
class StoredHeader:
    """What the server learns from a stored header: where the segments start and the keys."""

    length: int  # bytes of the header: the first segment starts here
    session_keys: tuple[bytes, ...]

    def __repr__(self) -> str:  # no key material in logs or tracebacks
        return f"StoredHeader(length={self.length}, keys={len(self.session_keys)})"


def _u32(data: bytes, pos: int) -> int:
    return int.from_bytes(data[pos:pos + 4], "little")


def decrypt_packet(packet: bytes, secret: bytes) -> Optional[bytes]:
    """The content of an encrypted header packet if the server's key opens it, else None."""
    if len(packet) < 4 + 32 + 12 + 16 or _u32(packet, 0) != 0:
        return None
    peer, sealed = packet[4:36], packet[36:]
    public = sodium.derive_pk(secret)
    try:
        shared = sodium.kx_client(public, secret, peer)
        out = bytearray(len(sealed))
        n = sodium.chacha20poly1305_decrypt(out, sealed, shared)
    except Exception:  # not ours, or tampered: the caller decides what none opening means
        return None
    return bytes(out[:n])


def parse_header(read: Callable[[int, int], bytes], size: int, secret: bytes,
                 what: str, max_bytes: int) -> StoredHeader:
    """Parse and open the header of a stored object of `size` bytes; `read(start, end)`
    reads it. Every fault is a `Crypt4ghError` naming `what`."""
    if size < 16:
        raise Crypt4ghError(f"{what}: not a Crypt4GH file (too short)")
    data = read(0, min(size, FIRST_READ, max_bytes))
    if data[:8] != MAGIC:
        raise Crypt4ghError(f"{what}: not a Crypt4GH file (no magic number)")
    if _u32(data, 8) != VERSION:
        raise Crypt4ghError(f"{what}: unsupported Crypt4GH version {_u32(data, 8)}")
    count = _u32(data, 12)
    pos, packets = 16, []
    for i in range(count):
        if pos + 4 > len(data):
            data = _more(read, data, pos + 4, size, max_bytes, what)
        length = _u32(data, pos)
        if length < 4 + 4:
            raise Crypt4ghError(f"{what}: header packet {i} has an invalid length {length}")
        end = pos + length
        if end > len(data):
            data = _more(read, data, end, size, max_bytes, what)
        packets.append(data[pos + 4:end])
        pos = end
    keys: list[bytes] = []
    for packet in packets:
        content = decrypt_packet(packet, secret)
        if content is None:
            continue  # a packet for another recipient
        kind = _u32(content, 0)
        if kind == PACKET_DATA_ENC:
            if _u32(content, 4) != 0 or len(content) != 8 + 32:
                raise Crypt4ghError(f"{what}: unsupported data encryption method"
                                    f" {_u32(content, 4)}")
            keys.append(content[8:40])
        elif kind == PACKET_EDIT_LIST:
            raise Crypt4ghError(f"{what}: the stored file carries an edit list, which this"
                                " server does not serve")
        else:
            raise Crypt4ghError(f"{what}: unknown header packet type {kind}")
    if not keys:
        raise Crypt4ghError(f"{what}: no header packet opens with the location's server key")
    body = size - pos
    if body % CIPHER_SEGMENT and body % CIPHER_SEGMENT <= CIPHER_DIFF:
        raise Crypt4ghError(f"{what}: truncated (a segment shorter than its nonce and MAC)")
    return StoredHeader(pos, tuple(dict.fromkeys(keys)))


def _more(read: Callable[[int, int], bytes], data: bytes, need: int, size: int,
          max_bytes: int, what: str) -> bytes:
    if need > max_bytes:
        raise Crypt4ghError(f"{what}: Crypt4GH header larger than max_header_bytes"
                            f" ({max_bytes})")
    if need > size:
        raise Crypt4ghError(f"{what}: truncated Crypt4GH header")
    return data + read(len(data), min(size, max(need, 2 * len(data)), max_bytes))


def plain_size(cipher_size: int, header: StoredHeader) -> int:
    body = cipher_size - header.length
    full, rest = divmod(body, CIPHER_SEGMENT)
    return full * SEGMENT + (rest - CIPHER_DIFF if rest else 0)


def decrypt_segment(cipher: bytes, keys: Sequence[bytes], what: str, index: int) -> bytes:
    """One segment's plaintext; a MAC failure (tampered or wrong key) is a `Crypt4ghError`:
    no byte of it is ever returned."""
    out = bytearray(max(0, len(cipher) - CIPHER_DIFF))
    for key in keys:
        try:
            n = sodium.chacha20poly1305_decrypt(out, cipher, key)
        except Exception:
            continue
        return bytes(out[:n])
    raise Crypt4ghError(f"{what}: segment {index} fails authentication (tampered or"
                        " corrupt); nothing of it is served")


def encrypt_segment(plain: bytes, key: bytes) -> bytes:
    """`plain` (at most one segment) as nonce + ciphertext + MAC under `key`."""
    out = bytearray(len(plain) + CIPHER_DIFF)
    n = sodium.chacha20poly1305_encrypt(out, plain, key)
    return bytes(out[:n])


def new_session_key() -> bytes:
    return os.urandom(32)


def data_enc_packet(session_key: bytes) -> bytes:
    return PACKET_DATA_ENC.to_bytes(4, "little") + (0).to_bytes(4, "little") + session_key


def edit_list_packet(lengths: Sequence[int]) -> bytes:
    return (PACKET_EDIT_LIST.to_bytes(4, "little") + len(lengths).to_bytes(4, "little")
            + b"".join(n.to_bytes(8, "little") for n in lengths))


def seal_packet(content: bytes, secret: bytes, recipient: bytes) -> bytes:
    """A header packet's content encrypted for `recipient` (method 0, from the server)."""
    sealed: bytes = encrypt_X25519_Chacha20_Poly1305(content, secret, recipient)
    return (0).to_bytes(4, "little") + sealed


def make_header(session_keys: Iterable[bytes], edit_list: Optional[Sequence[int]],
                secret: bytes, recipient: bytes) -> bytes:
    """A whole header for `recipient`: one data encryption packet per session key, then the
    edit list (if any)."""
    contents = [data_enc_packet(k) for k in session_keys]
    if edit_list is not None:
        contents.append(edit_list_packet(edit_list))
    packets = [seal_packet(c, secret, recipient) for c in contents]
    return (MAGIC + VERSION.to_bytes(4, "little") + len(packets).to_bytes(4, "little")
            + b"".join((len(p) + 4).to_bytes(4, "little") + p for p in packets))
