"""Crypt4GH: serve `<name>.c4gh` objects exactly, re-encrypted for the client (mode 1,
`encryptionScheme=C4GH`) or decrypted on the fly through /data (mode 2, the default).

A storage concern plus a ticket post-step (DESIGN.md): `wrap` puts a `Crypt4ghStorage`
(plaintext view) in front of a location's backend when the location has `keys`; the
engine asks `post_step` once per ticket, which refuses what the location forbids and, for
mode 1, turns the plaintext pieces into the encrypted ticket (`ticket.encrypted_ticket`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from ..formats.base import Piece, Source
from ..protocol import InvalidInput, Query, Ticket, UnsupportedFormat
from ..storage.base import Storage
from .header import Crypt4ghError
from .keys import (
    CLIENT_KEY_ENVIRON,
    CLIENT_KEY_HEADER,
    Crypt4ghConfig,
    KeyError_,
    LocationKeys,
    load_keys,
)
from .storage import Crypt4ghStorage

__all__ = [
    "CLIENT_KEY_HEADER", "Crypt4ghConfig", "Crypt4ghError", "Crypt4ghStorage", "Encryption",
    "LocationKeys", "post_step", "wrap",
]

SCHEME = "C4GH"


@dataclass(frozen=True)
class Encryption:
    """What a ticket request asks about encryption: `encryptionScheme` and the client's
    public key header (HTTP-free, like `Query`)."""

    scheme: Optional[str] = None
    client_public_key: Optional[str] = None

    @classmethod
    def of_get(cls, args: Mapping[str, str], environ: Mapping[str, Any]) -> Optional[Encryption]:
        """From a GET's query arguments and the WSGI environ (None: nothing asked)."""
        scheme, key = args.get("encryptionScheme"), environ.get(CLIENT_KEY_ENVIRON)
        return None if scheme is None and key is None else cls(scheme, key)

    @classmethod
    def of_post(cls, body: bytes, environ: Mapping[str, Any]) -> Optional[Encryption]:
        """From a POST body that `parse_post` accepted, and the WSGI environ."""
        import json

        scheme = None
        if b"encryptionScheme" in body:
            doc = json.loads(body)
            scheme = doc.get("encryptionScheme") if isinstance(doc, dict) else None
        key = environ.get(CLIENT_KEY_ENVIRON)
        return None if scheme is None and key is None else cls(scheme, key)


def wrap(storage: Storage, location: Any, mount: str, config: Any, index: int) -> Storage:
    """The location's storage, behind a plaintext view when it has `keys`. ValueError naming
    the location when a key is missing or does not load (start and reload refuse it)."""
    keys: Optional[LocationKeys] = getattr(location, "keys", None)
    if keys is None:
        return storage
    what = f"location {location.name!r}" if location.name else f"locations[{index}]"
    try:
        loaded = load_keys(keys, config.crypt4gh)
    except KeyError_ as err:
        raise ValueError(f"Crypt4GH keys of {what}: {err}") from None
    return Crypt4ghStorage(storage, loaded, config.crypt4gh, config.data_url(), mount,
                           location.allow_plaintext, what)


def post_step(source: Source, query: Query, encryption: Optional[Encryption]
              ) -> Optional[Callable[[list[Piece]], Ticket]]:
    """None for an ordinary ticket (a plain location whatever `encryptionScheme` says, as
    the compliance suite expects; or mode 2); for mode 1 the function that makes the ticket
    from the pieces. InvalidInput when the location forbids plaintext and the request did
    not ask for C4GH; UnsupportedFormat for a scheme other than C4GH."""
    storage = source.storage
    if not isinstance(storage, Crypt4ghStorage):
        return None
    scheme = encryption.scheme if encryption is not None else None
    if scheme is None or scheme == "":
        if not storage.allow_plaintext:
            raise InvalidInput(f"{query.id!r} is served Crypt4GH-encrypted only: ask with"
                               f" encryptionScheme={SCHEME} (and your public key in the"
                               f" {CLIENT_KEY_HEADER} header)")
        return None
    if not isinstance(scheme, str) or scheme.upper() != SCHEME:
        raise UnsupportedFormat(f"encryptionScheme {scheme!r} is not supported ({SCHEME})")
    recipient = storage.recipient(encryption.client_public_key if encryption else None)
    from .ticket import encrypted_ticket

    return lambda pieces: encrypted_ticket(storage, source, query, pieces, recipient)
