"""Crypt4GH keys: the configuration schema (htsget-rs's keys) and loading them.

Per location (htsget-rs spellings, so its users' files work):

    [locations.keys]
    server.private = { kind = "File", key = "keys/server.sec", passphrase_env = "C4GH_PASSPHRASE" }
    server.public = { kind = "File", key = "keys/server.pub" }    # optional: checked if given
    client.public = { kind = "Header" }    # or { kind = "File", key = "keys/client.pub" }

`kind = "Header"`: the client sends the base64 of its public key file in the
`Htsget-Context-Public-Key` request header (htsget-rs's convention). A private key protected
by a passphrase takes it from `passphrase_env` (an environment variable's name) or
`passphrase_file` (a file's first line), else from `[crypt4gh]`'s own, else from
`C4GH_PASSPHRASE` (the crypt4gh tool's variable).

Loading happens when the location's storage is built (start and every reload), so a missing
or undecryptable key refuses the configuration with a message naming the location.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from dataclasses import dataclass
from typing import Any, Optional

from ..typed_config import _Ctx, _join, _opt

#: the request header of a client's public key (htsget-rs: `Htsget-Context-Public-Key`)
CLIENT_KEY_HEADER = "Htsget-Context-Public-Key"
#: WSGI environ name of that header
CLIENT_KEY_ENVIRON = "HTTP_HTSGET_CONTEXT_PUBLIC_KEY"
DEFAULT_PASSPHRASE_ENV = "C4GH_PASSPHRASE"
KINDS = ("File", "Header")
#: largest key file read (a Crypt4GH or OpenSSH key is a few hundred bytes)
MAX_KEY_FILE = 16 << 10


def _kind(table: Any, key: str, ctx: _Ctx) -> Any:
    """htsget-rs accepts File / file / FILE: one spelling here."""
    if isinstance(table, dict) and isinstance(table.get("kind"), str):
        low = table["kind"].lower()
        for kind in KINDS:
            if kind.lower() == low:
                return {**table, "kind": kind}
        if low == "secretsmanager":
            raise ctx.error(_join(key, "kind"), "SecretsManager keys are not supported here:"
                            " use kind = \"File\" (or \"Header\" for the client's public key)")
    return table


@dataclass
class KeySource:
    """Where one key comes from."""

    kind: str = _opt("File", "File (a key file) | Header (client public key only)",
                     choices=KINDS)
    key: Optional[str] = _opt(None, "File: path of the key file", path=True)
    passphrase_env: Optional[str] = _opt(
        None, "private key: environment variable holding its passphrase")
    passphrase_file: Optional[str] = _opt(
        None, "private key: file whose first line is its passphrase", path=True)

    @classmethod
    def _prepare(cls, table: dict[str, Any], key: str, ctx: _Ctx) -> dict[str, Any]:
        result: dict[str, Any] = _kind(table, key, ctx)
        return result

    def _validate(self, key: str, ctx: _Ctx) -> None:
        if self.kind == "File" and not self.key:
            raise ctx.error(_join(key, "key"), "required by kind = \"File\"")
        if self.kind == "Header" and (self.key or self.passphrase_env or self.passphrase_file):
            raise ctx.error(key, "kind = \"Header\" takes no key file or passphrase")


@dataclass
class KeyPairConfig:
    private: Optional[KeySource] = _opt(None, "the private key (server only)")
    public: Optional[KeySource] = _opt(None, "the public key")


@dataclass
class LocationKeys:
    """A location's Crypt4GH keys: its objects are `<name>.c4gh`, encrypted for `server`."""

    server: KeyPairConfig = _opt(doc="the server's key pair: decrypts stored headers",
                                 factory=KeyPairConfig)
    client: Optional[KeyPairConfig] = _opt(
        None, "the recipient of encryptionScheme=C4GH tickets: client.public (File or Header;"
        " default: Header)")

    def _validate(self, key: str, ctx: _Ctx) -> None:
        private = self.server.private
        if private is None:
            raise ctx.error(_join(key, "server.private"), "required: the key that decrypts"
                            " the stored headers")
        if private.kind != "File":
            raise ctx.error(_join(key, "server.private.kind"), "a private key comes from a File")
        if self.server.public is not None and self.server.public.kind != "File":
            raise ctx.error(_join(key, "server.public.kind"), "the server's public key comes"
                            " from a File")
        if self.client is not None:
            if self.client.private is not None:
                raise ctx.error(_join(key, "client.private"),
                                "the client's private key is never given to the server")
            if self.client.public is None:
                raise ctx.error(_join(key, "client.public"), "required in [keys.client]")


@dataclass
class Crypt4ghConfig:
    """Settings shared by every location with `keys`."""

    max_header_bytes: int = _opt(
        65536, "largest Crypt4GH header read from storage, bytes (more: an error)", min=16)
    stream_segments: int = _opt(
        16, "/data decryption: 64 KiB segments read and decrypted per step (memory bound)",
        min=1, max=1024)
    passphrase_env: str = _opt(
        DEFAULT_PASSPHRASE_ENV, "environment variable holding private-key passphrases"
        " (a key's own passphrase_env / passphrase_file win)")
    passphrase_file: Optional[str] = _opt(
        None, "file whose first line is the private-key passphrase", path=True)


class KeyError_(ValueError):
    """A key that cannot be loaded (the message names the file, never a secret)."""


@dataclass(frozen=True)
class ServerKeys:
    """A location's loaded keys."""

    secret: bytes  # the server's X25519 secret key (32 bytes)
    public: bytes  # its public key
    client: Optional[bytes]  # a fixed recipient (client.public kind File), else None
    client_from_header: bool  # client.public kind Header (or no [keys.client])

    def __repr__(self) -> str:  # never the secret in a log line or a traceback
        return f"ServerKeys(public={self.public.hex()[:16]}..., client_from_header=" \
               f"{self.client_from_header})"


def _read_small(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except OSError as err:
        raise KeyError_(f"cannot read the {what} {path!r}: {err.strerror or err}") from None
    if len(data) > MAX_KEY_FILE:
        raise KeyError_(f"the {what} {path!r} is too large to be a key")
    return data


def parse_public_key(data: bytes) -> bytes:
    """A Crypt4GH (or OpenSSH ed25519) public key file's 32-byte key. ValueError."""
    lines = [line.strip() for line in data.splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty public key")
    if b"CRYPT4GH" in lines[0] and lines[0].startswith(b"-----BEGIN"):
        if not lines[-1].startswith(b"-----END"):
            raise ValueError("not a PEM public key")
        try:
            key = base64.b64decode(b"".join(lines[1:-1]), validate=True)
        except binascii.Error:
            raise ValueError("not a base64 public key") from None
    elif lines[0].startswith(b"ssh-"):
        from crypt4gh.keys import ssh

        key = ssh.get_public_key(lines[0])
    else:
        raise ValueError("not a Crypt4GH or OpenSSH public key")
    if len(key) != 32:
        raise ValueError(f"a public key is 32 bytes, this one {len(key)}")
    return bytes(key)


def _passphrase(source: KeySource, settings: Crypt4ghConfig,
                environ: Optional[dict[str, str]] = None) -> Optional[str]:
    env = os.environ if environ is None else environ
    if source.passphrase_file:
        return _first_line(source.passphrase_file)
    if source.passphrase_env:
        if source.passphrase_env not in env:
            raise KeyError_(f"the passphrase variable {source.passphrase_env} is not set")
        return env[source.passphrase_env]
    if settings.passphrase_file:
        return _first_line(settings.passphrase_file)
    return env.get(settings.passphrase_env)


def _first_line(path: str) -> str:
    text = _read_small(path, "passphrase file").decode("utf-8", "replace")
    return text.splitlines()[0] if text else ""


def parse_private_key(data: bytes, passphrase: Optional[str]) -> bytes:
    """A Crypt4GH (or OpenSSH ed25519) private key file's 32-byte X25519 secret. ValueError
    naming what is wrong (a locked key without passphrase, a wrong passphrase)."""
    from crypt4gh.keys import c4gh, ssh
    from crypt4gh.keys.kdf import KDFS, derive_key

    lines = [line.strip() for line in data.splitlines() if line.strip()]
    if not lines or not lines[0].startswith(b"-----BEGIN") or not lines[-1].startswith(
            b"-----END"):
        raise ValueError("not a PEM private key")
    try:
        blob = base64.b64decode(b"".join(lines[1:-1]), validate=True)
    except binascii.Error:
        raise ValueError("not a base64 private key") from None
    stream = io.BytesIO(blob)
    if blob.startswith(c4gh.MAGIC_WORD):
        stream.read(len(c4gh.MAGIC_WORD))
        kdf = c4gh.decode_string(stream)
        if kdf != b"none" and kdf not in KDFS:
            raise ValueError(f"unsupported key derivation {kdf!r}")
        salt, rounds = b"", 0
        if kdf != b"none":
            options = c4gh.decode_string(stream)
            rounds, salt = int.from_bytes(options[:4], "big"), options[4:]
        cipher = c4gh.decode_string(stream)
        secret = c4gh.decode_string(stream)
        if cipher == b"none":
            key = secret
        elif cipher == b"chacha20_poly1305":
            if passphrase is None:
                raise ValueError("the key is locked and no passphrase is set (passphrase_env,"
                                 " passphrase_file or C4GH_PASSPHRASE)")
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

            shared = derive_key(kdf, passphrase.encode(), salt, rounds)
            try:
                key = ChaCha20Poly1305(shared).decrypt(secret[:12], secret[12:], None)
            except InvalidTag:
                raise ValueError("wrong passphrase") from None
        else:
            raise ValueError(f"unsupported key cipher {cipher!r}")
    elif blob.startswith(ssh.MAGIC_WORD):
        stream.read(len(ssh.MAGIC_WORD))
        try:
            key = ssh.parse_private_key(stream, lambda: passphrase or "")[0]
        except SystemExit:  # the library exits on a bad passphrase
            raise ValueError("wrong passphrase or unsupported OpenSSH key") from None
    else:
        raise ValueError("not a Crypt4GH or OpenSSH private key")
    if len(key) != 32:
        raise ValueError(f"a private key is 32 bytes, this one {len(key)}")
    return bytes(key)


def public_of(secret: bytes) -> bytes:
    from crypt4gh import sodium

    return bytes(sodium.derive_pk(secret))


def load_keys(keys: LocationKeys, settings: Crypt4ghConfig,
              environ: Optional[dict[str, str]] = None) -> ServerKeys:
    """The location's keys, loaded and checked (KeyError_ naming the file and the fault)."""
    private = keys.server.private
    assert private is not None and private.key
    try:
        secret = parse_private_key(_read_small(private.key, "private key"),
                                   _passphrase(private, settings, environ))
    except KeyError_:
        raise
    except ValueError as err:
        raise KeyError_(f"keys.server.private {private.key!r}: {err}") from None
    public = public_of(secret)
    given = keys.server.public
    if given is not None and given.key:
        try:
            stated = parse_public_key(_read_small(given.key, "public key"))
        except ValueError as err:
            raise KeyError_(f"keys.server.public {given.key!r}: {err}") from None
        if stated != public:
            raise KeyError_(f"keys.server.public {given.key!r} is not the public key of"
                            f" keys.server.private {private.key!r}")
    client: Optional[bytes] = None
    from_header = True
    if keys.client is not None and keys.client.public is not None:
        source = keys.client.public
        from_header = source.kind == "Header"
        if source.kind == "File":
            assert source.key
            try:
                client = parse_public_key(_read_small(source.key, "public key"))
            except ValueError as err:
                raise KeyError_(f"keys.client.public {source.key!r}: {err}") from None
    return ServerKeys(secret, public, client, from_header)


def header_public_key(value: str) -> bytes:
    """The client's public key from `Htsget-Context-Public-Key`: base64 of the key file
    (htsget-rs), or of the bare 32-byte key. ValueError."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{CLIENT_KEY_HEADER} is not base64") from None
    if len(raw) == 32:
        return raw
    return parse_public_key(raw)
