"""Local files under a root directory, served to clients through our /data endpoint."""

from __future__ import annotations

import errno
import os
import stat
import time
from typing import Optional
from urllib.parse import quote

from ..protocol import HtsgetError, InternalError, NotFound
from .base import range_header

PATH_TTL = 2.0
PATH_CACHE = 4096

#: errno values that mean "no such file here": a name too long for the file system, a
#: symlink loop, a file where a directory should be (and the reverse).
_MISSING = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG,
                      errno.ELOOP, errno.EINVAL})


def os_error(key: str, err: Exception) -> HtsgetError:
    """A clean htsget error for an OSError (or a name the OS cannot encode) on `key`:
    404 when the name cannot be a file, else a 500 storage fault naming the key (logged
    without a traceback; the server's paths stay out of the message)."""
    if not isinstance(err, OSError) or err.errno in _MISSING:
        return NotFound(f"no such object: {key!r}")
    return InternalError(f"cannot read {key!r}: {err.strerror or type(err).__name__}")


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


def visible(key: str) -> bool:
    """True for a key with no hidden part: no empty segment, none starting with "."."""
    return all(part and not part.startswith(".") for part in key.split("/"))


#: the explicit /data mount of an unnamed first location, for its keys that start with "~"
BARE_ALIAS = "~0"


def mount_path(mount: str, key: str) -> str:
    """The /data path (after "/data/") of `key` in the location mounted at `mount` (see
    `resolver.mount_name`); `Resolver.mount_for` is its inverse. On the bare mount (""), a
    key starting with "~" goes under "~0/", so it is never read as another location's mount."""
    if mount:
        return f"{mount}/{key}"
    return f"{BARE_ALIAS}/{key}" if key.startswith("~") else key


class LocalStorage:
    """Files below `root`; `block_url` points at `<data_url>/data/[<mount>/]<key>` with a
    Range header."""

    def __init__(self, root: str, data_url: str, mount: str = "") -> None:
        self.root = os.path.realpath(root)
        self.data_url = data_url.rstrip("/") + "/data/"
        self.mount = mount
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
        try:
            full = os.path.realpath(os.path.join(self.root, clean))
        except (OSError, ValueError) as err:
            raise os_error(key, err) from None
        if full != self.root and not full.startswith(self.root + os.sep):
            raise NotFound(f"no such object: {key!r}")
        if len(self._paths) >= PATH_CACHE:
            self._paths.clear()
        self._paths[key] = (full, now + PATH_TTL)
        return full

    def resolved_key(self, key: str) -> str:
        """The key of the file `key` leads to once symlinks are resolved (inside the root)."""
        return os.path.relpath(self.path(key), self.root).replace(os.sep, "/")

    def exists(self, key: str) -> bool:
        try:
            return os.path.isfile(self.path(key))
        except NotFound:
            return False

    def _stat(self, key: str) -> os.stat_result:
        try:
            st = os.stat(self.path(key))
        except (OSError, ValueError) as err:
            raise os_error(key, err) from None
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
        except (OSError, ValueError) as err:
            raise os_error(key, err) from None

    def block_url(self, key: str, start: int, end: int) -> tuple[str, Optional[dict[str, str]]]:
        return self.data_url + quote(mount_path(self.mount, key)), range_header(start, end)
