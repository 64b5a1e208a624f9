"""Ordered `[[locations]]`: an ID -> (storage, key stem) by regex and substitution."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from ..config import Config, ConfigError, LocationConfig
from ..protocol import Format
from .base import Storage

#: `$1`, `${1}`, `${name}`, and `$$` for a literal dollar
_GROUP_REF = re.compile(r"\$(?:(\d+)|\{(\w+)\}|(\$))")


def substitute(template: str, match: re.Match[str]) -> str:
    """Expand `$1`, `${1}` and `${name}` in `template` from the groups of `match`."""

    def repl(m: re.Match[str]) -> str:
        if m.group(3):
            return "$"
        ref = m.group(1) or m.group(2)
        return match.group(int(ref) if ref.isdigit() else ref) or ""

    return _GROUP_REF.sub(repl, template)


def template_groups(template: str) -> list[str]:
    """The group references a substitution uses (for validation), as strings."""
    return [
        str(int(ref)) if ref.isdigit() else ref
        for m in _GROUP_REF.finditer(template)
        if (ref := m.group(1) or m.group(2))
    ]


@dataclass
class Match:
    storage: Storage
    key: str  # the substituted stem; format extensions are appended to it
    location: LocationConfig


StorageFactory = Callable[[LocationConfig, str, Config], Storage]


def mount_name(i: int, location: LocationConfig) -> str:
    """Path segment under /data that selects location `i`: "~name" for a named location,
    "" for an unnamed first one (so plain `--data-dir` urls read /data/<key>), else "~i"."""
    if location.name:
        return "~" + location.name
    return "" if i == 0 else f"~{i}"


def default_factory(location: LocationConfig, mount: str, config: Config) -> Storage:
    """Build the backend a location names (s3/url modules are imported only when used)."""
    if location.backend == "file":
        from .local import LocalStorage

        root = os.path.join(location.root or ".", location.prefix)
        return LocalStorage(root, config.data_url(), mount)
    try:
        if location.backend == "s3":
            from .s3 import S3Storage

            return S3Storage.from_location(location, mount, config)
        if location.backend == "url":
            from .url import UrlStorage

            return UrlStorage.from_location(location, mount, config)
    except ImportError as err:
        raise ValueError(f"backend {location.backend!r} is not available: {err}") from None
    raise ValueError(f"unknown backend {location.backend!r}")


class Resolver:
    """Tries locations in order; `storage_factory` is injectable for tests and later backends."""

    def __init__(self, config: Config, storage_factory: StorageFactory = default_factory) -> None:
        self.config = config
        self.rules: list[tuple[re.Pattern[str], LocationConfig, Storage]] = []
        #: storages by their /data mount segment, for the data endpoint
        self.mounts: dict[str, Storage] = {}
        for i, loc in enumerate(config.locations):
            mount = mount_name(i, loc)
            try:
                storage = storage_factory(loc, mount, config)
            except ValueError as err:  # e.g. an invalid bucket name, a missing backend
                raise ConfigError(str(err), f"locations[{i}]") from None
            self.rules.append((re.compile(loc.regex), loc, storage))
            self.mounts[mount] = storage

    def matches(self, id: str, fmt: Optional[Format] = None) -> Iterator[Match]:
        """Every location whose regex matches `id` (and serves `fmt`), in order."""
        for regex, location, storage in self.rules:
            if location.formats and fmt is not None:
                if fmt.value not in {f.upper() for f in location.formats}:
                    continue
            m = regex.fullmatch(id)
            if m is None:
                continue
            key = substitute(location.substitution, m)
            if location.backend == "s3" and location.bucket and "$" in location.bucket:
                # a bucket chosen by capture groups travels in the key: "<bucket>/<key>"
                key = substitute(location.bucket, m) + "/" + key
            yield Match(storage, key, location)

    def mount_for(self, path: str) -> tuple[Optional[Storage], str]:
        """Split a /data path into (storage, key) by its optional leading ~mount segment."""
        if path.startswith("~"):
            head, _, rest = path.partition("/")
            if head in self.mounts:
                return self.mounts[head], rest
        return self.mounts.get(""), path
