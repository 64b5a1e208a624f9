"""Crypt4GH test helpers: key pairs, encrypting files, a data tree of encrypted files and
their plaintext twins, and fetching / decrypting tickets."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from crypt4gh import lib, sodium
from crypt4gh.keys.c4gh import generate

from htsgetr.crypt4gh.header import CIPHER_SEGMENT, SEGMENT

CRYPT4GH_CLI = str(Path(sys.executable).with_name("crypt4gh"))
SHARED_C4GH = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "c4gh"


def keypair(directory: Path, name: str, passphrase: Optional[bytes] = None) -> tuple[Path, Path]:
    """`name.sec` / `name.pub` in `directory` (the crypt4gh tool's formats)."""
    sec, pub = directory / f"{name}.sec", directory / f"{name}.pub"
    if not sec.exists():
        generate(str(sec), str(pub), passphrase, b"htsgetr tests")
    return sec, pub


def raw_keys(sec: Path, passphrase: Optional[str] = None) -> tuple[bytes, bytes]:
    from htsgetr.crypt4gh.keys import parse_private_key

    secret = parse_private_key(sec.read_bytes(), passphrase)
    return secret, bytes(sodium.derive_pk(secret))


def encrypt_file(src: Path, dst: Path, recipient_pub: Path, sender_sec: Optional[Path] = None
                 ) -> Path:
    """`src` encrypted for `recipient_pub` (as `crypt4gh encrypt` does)."""
    from htsgetr.crypt4gh.keys import parse_public_key

    recipient = parse_public_key(recipient_pub.read_bytes())
    sender = raw_keys(sender_sec)[0] if sender_sec else os.urandom(32)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        lib.encrypt([(0, sender, recipient)], fin, fout)
    return dst


def decrypt_cli(payload: bytes, sec: Path, tmp: Path) -> subprocess.CompletedProcess:
    """`crypt4gh decrypt --sk sec` of `payload` (the real command line tool)."""
    src = tmp / "payload.c4gh"
    src.write_bytes(payload)
    env = {**os.environ, "C4GH_PASSPHRASE": ""}
    with open(src, "rb") as fin:
        return subprocess.run([CRYPT4GH_CLI, "decrypt", "--sk", str(sec)], stdin=fin,
                              capture_output=True, timeout=120, env=env)


def b64_key_file(pub: Path) -> str:
    """The `Htsget-Context-Public-Key` value: base64 of the key file (htsget-rs)."""
    return base64.b64encode(pub.read_bytes()).decode()


def fetch_all(ticket: dict[str, Any], get: Callable[[str, dict[str, str]], bytes]) -> bytes:
    out = io.BytesIO()
    for block in ticket["htsget"]["urls"]:
        url = block["url"]
        if url.startswith("data:"):
            assert url.startswith("data:;base64,")
            out.write(base64.b64decode(url[len("data:;base64,"):]))
        else:
            out.write(get(url, block.get("headers") or {}))
    return out.getvalue()


def segments_of(size: int) -> int:
    return -(-size // SEGMENT)


def build_tree(root: Path, plain: Path, server_pub: Path, names: list[str],
               encrypt_index: tuple[str, ...] = ()) -> None:
    """`root/<name>.c4gh` for each file `plain/<name>` and its plain indexes beside it;
    indexes listed in `encrypt_index` are encrypted too."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        encrypt_file(plain / name, root / (name + ".c4gh"), server_pub)
        for companion in plain.iterdir():
            if companion.name.startswith(name) and companion.name != name:
                if companion.name in encrypt_index:
                    encrypt_file(companion, root / (companion.name + ".c4gh"), server_pub)
                else:
                    shutil.copy(companion, root / companion.name)


__all__ = ["CIPHER_SEGMENT", "SEGMENT", "keypair", "encrypt_file", "decrypt_cli",
           "b64_key_file", "fetch_all", "build_tree", "raw_keys", "SHARED_C4GH"]
