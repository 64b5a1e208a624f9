"""Local files under a root directory, served to clients through our /data endpoint."""

from __future__ import annotations

import os
import stat
import time
from typing import Optional
from urllib.parse import quote

from ..protocol import NotFound
from .base import range_header

PATH_TTL = 2.0
PATH_CACHE = 4096


def safe_key(key: str) -> Optional[str]:
    """Normalise a storage key, or None if it could escape the root.

    Refuses absolute paths, `..` segments, NUL and backslashes; URL decoding happened
    before (an encoded slash arrives here as a literal `/` and is then checked like one).
    """
    if not key or "\x00" in key or "\\" in key or key.startswith("/"):
        return None
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    return "/".join(parts)


class LocalStorage:
    """Files below `root`; `block_url` points at `<data_url>/data/<key>` with a Range header."""

    def __init__(self, root: str, data_url: str, mount: str = "") -> None:
        self.root = os.path.realpath(root)
        self.data_url = data_url.rstrip("/") + "/data/" + (mount + "/" if mount else "")
        self.name = f"file:{self.root}"
        self._paths: dict[str, tuple[str, float]] = {}

    def check(self) -> None:
        """ValueError unless the root is a directory we can list (checked at start)."""
        if not os.path.isdir(self.root) or not os.access(self.root, os.R_OK | os.X_OK):
            raise ValueError(f"no readable directory {self.root!r}")

    def path(self, key: str) -> str:
        """The absolute path of `key`, guaranteed to lie inside the root (symlinks resolved).

        Resolutions are remembered for `PATH_TTL` seconds: realpath costs a syscall per path
        component and a ticket asks several times for the same few keys.
        """
        now = time.monotonic()
        hit = self._paths.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        clean = safe_key(key)
        if clean is None:
            raise NotFound(f"no such object: {key!r}")
        full = os.path.realpath(os.path.join(self.root, clean))
        if full != self.root and not full.startswith(self.root + os.sep):
            raise NotFound(f"no such object: {key!r}")
        if len(self._paths) >= PATH_CACHE:
            self._paths.clear()
        self._paths[key] = (full, now + PATH_TTL)
        return full

    def exists(self, key: str) -> bool:
        try:
            return os.path.isfile(self.path(key))
        except NotFound:
            return False

    def _stat(self, key: str) -> os.stat_result:
        try:
            st = os.stat(self.path(key))
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no such object: {key!r}") from None
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(f"no such object: {key!r}")
        return st

    def size(self, key: str) -> int:
        return self._stat(key).st_size

    def version(self, key: str) -> str:
        st = self._stat(key)
        return f"{st.st_mtime_ns}:{st.st_size}:{st.st_ino}"

    def read(self, key: str, start: int, end: int) -> bytes:
        try:
            with open(self.path(key), "rb") as f:
                f.seek(start)
                return f.read(max(0, end - start))
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"no such object: {key!r}") from None

    def block_url(self, key: str, start: int, end: int) -> tuple[str, Optional[dict[str, str]]]:
        return self.data_url + quote(key), range_header(start, end)
