"""Local files under a root directory, served to clients through our /data endpoint."""

from __future__ import annotations

import errno
import io
import os
import stat
import threading
import time
import weakref
from collections import OrderedDict
from typing import Optional
from urllib.parse import quote

from ..protocol import HtsgetError, InternalError, NotFound
from .base import range_header

PATH_TTL = 2.0
#: how long the stat() of `exists` may serve the `size`/`version` asked right after it (the
#: same ticket: locate, then the cache key), seconds; older answers are asked again
STAT_REUSE = 0.005
PATH_CACHE = 4096
#: open files kept per storage and process (least recently used closed past it)
OPEN_FILES = 64
#: seconds an open file is trusted to be the file at its path: past that, a read checks the
#: path's (mtime, size, inode) again (`version`/`size` check it at every call)
HANDLE_TTL = 1.0

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


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What tells one version of a file from another: mtime, size, inode, device."""
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def _open_nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)  # a FIFO planted under the root cannot hang us


class _Handle:
    """An open file, closed once evicted and no read is using it."""

    __slots__ = ("file", "fd", "identity", "checked", "users", "evicted")

    def __init__(self, file: io.FileIO, identity: tuple[int, int, int, int], now: float) -> None:
        self.file, self.fd, self.identity, self.checked = file, file.fileno(), identity, now
        self.users, self.evicted = 0, False


class OpenFiles:
    """A bounded LRU of open files (per storage, per process), thread-safe: reads use
    `os.pread` on a kept descriptor instead of opening the file each time. A descriptor is
    used only while its file is still the one at its path: `check` (every stat) and reads
    past `HANDLE_TTL` compare (mtime, size, inode, device) and reopen when they changed; an
    evicted descriptor is closed once its last read is done, never under a reader."""

    def __init__(self, capacity: int = OPEN_FILES) -> None:
        self.capacity = capacity
        self._files: OrderedDict[str, _Handle] = OrderedDict()
        self._lock = threading.Lock()
        _ALL_OPEN_FILES.add(self)

    def read(self, path: str, start: int, end: int) -> bytes:
        handle = self._acquire(path)
        try:
            want = max(0, end - start)
            # no buffer larger than the file (as it was opened) for a read past its end
            first = min(want, max(0, handle.identity[1] - start))
            data = os.pread(handle.fd, first, start) if first else b""
            if len(data) < want:  # the file's end, a short read, or a file grown since
                parts, got = [data], len(data)
                while got < want:
                    more = os.pread(handle.fd, min(want - got, 1 << 20), start + got)
                    if not more:
                        break
                    parts.append(more)
                    got += len(more)
                data = b"".join(parts)
            return data
        finally:
            self._release(handle)

    def check(self, path: str, st: os.stat_result) -> None:
        """The file at `path` was just stat'ed: drop its open file if that is not it now.
        (Every ticket stats its files: the usual answer, "still the same", takes no lock.)"""
        handle = self._files.get(path)
        if handle is None:
            return
        if handle.identity == (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev):
            handle.checked = time.monotonic()
            return
        with self._lock:
            if self._files.get(path) is handle:
                self._evict(path)

    def _acquire(self, path: str) -> _Handle:
        now = time.monotonic()
        with self._lock:
            handle = self._files.get(path)
            if handle is not None and now - handle.checked <= HANDLE_TTL:
                self._files.move_to_end(path)
                handle.users += 1
                return handle
        if handle is not None:  # stale: is it still the file at the path?
            try:
                same = _identity(os.stat(path)) == handle.identity
            except OSError:
                same = False
            with self._lock:
                if self._files.get(path) is handle:
                    if same:
                        handle.checked = now
                        self._files.move_to_end(path)
                        handle.users += 1
                        return handle
                    self._evict(path)
        # builtins.open, not os.open: one place where opening fails, for every caller
        file = open(path, "rb", buffering=0, opener=_open_nonblocking)
        try:
            st = os.fstat(file.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "not a regular file", path)
        except BaseException:
            file.close()
            raise
        handle = _Handle(file, _identity(st), now)
        with self._lock:
            old = self._files.get(path)
            if old is not None:
                self._evict(path)
            self._files[path] = handle
            handle.users += 1
            while len(self._files) > self.capacity:
                self._evict(next(iter(self._files)))
        return handle

    def _release(self, handle: _Handle) -> None:
        with self._lock:
            handle.users -= 1
            if handle.evicted and handle.users == 0:
                handle.file.close()

    def _evict(self, path: str) -> None:
        """Forget `path`'s open file, closing it unless a read uses it (lock held)."""
        handle = self._files.pop(path)
        handle.evicted = True
        if handle.users == 0:
            handle.file.close()

    def clear(self) -> None:
        with self._lock:
            for path in list(self._files):
                self._evict(path)

    def _after_fork(self) -> None:
        """In a forked child: its own lock, and descriptors of its own from the next read."""
        self._lock = threading.Lock()
        for handle in self._files.values():
            handle.file.close()
        self._files = OrderedDict()

    def __len__(self) -> int:
        return len(self._files)


_ALL_OPEN_FILES: weakref.WeakSet[OpenFiles] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for files in list(_ALL_OPEN_FILES):
        files._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


class LocalStorage:
    """Files below `root`; `block_url` points at `<data_url>/data/[<mount>/]<key>` with a
    Range header."""

    def __init__(self, root: str, data_url: str, mount: str = "") -> None:
        self.root = os.path.realpath(root)
        self.data_url = data_url.rstrip("/") + "/data/"
        self.mount = mount
        self.name = f"file:{self.root}"
        self._paths: dict[str, tuple[str, float]] = {}
        self._urls: dict[str, str] = {}  # block_url's, by key
        self.files = OpenFiles()
        #: stat() results `exists` just got, by path: (result, monotonic deadline), each
        #: used once by the `size`/`version` that follows in the same ticket
        self._fresh: dict[str, tuple[os.stat_result, float]] = {}

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
            path = self.path(key)
            st = os.stat(path)
        except (NotFound, OSError, ValueError):
            return False
        if not stat.S_ISREG(st.st_mode):
            return False
        if len(self._fresh) >= 64:
            self._fresh.clear()
        self._fresh[path] = (st, time.monotonic() + STAT_REUSE)
        return True

    def _stat(self, key: str) -> os.stat_result:
        path = self.path(key)
        fresh = self._fresh.pop(path, None)
        if fresh is not None and fresh[1] > time.monotonic():
            st = fresh[0]  # `exists` asked a moment ago: one stat() for both
        else:
            try:
                st = os.stat(path)
            except (OSError, ValueError) as err:
                raise os_error(key, err) from None
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(f"no such object: {key!r}")
        self.files.check(path, st)
        return st

    def size(self, key: str) -> int:
        return self._stat(key).st_size

    def version(self, key: str) -> str:
        st = self._stat(key)
        return f"{st.st_mtime_ns}:{st.st_size}:{st.st_ino}"

    def read(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of `key` (fewer at the end of the file), by `os.pread` on a
        kept open file (`OpenFiles`)."""
        try:
            return self.files.read(self.path(key), start, end)
        except (OSError, ValueError, OverflowError) as err:
            raise os_error(key, err) from None

    def block_url(self, key: str, start: int, end: int) -> tuple[str, Optional[dict[str, str]]]:
        url = self._urls.get(key)
        if url is None:  # every ticket of a file names its url: spelt once
            if len(self._urls) >= PATH_CACHE:
                self._urls.clear()
            url = self._urls[key] = self.data_url + quote(mount_path(self.mount, key))
        return url, range_header(start, end)
