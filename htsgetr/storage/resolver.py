"""Ordered `[[locations]]`: an ID -> (storage, key stem) by regex and substitution; and back,
a /data path -> (storage, key), admitted only when a ticket of that location could name it.

/data paths: `~<name>/<key>` (a named location), `~<i>/<key>` (the i-th location, unnamed),
and `<key>` for the first location when it is unnamed and the key does not start with "~"
(`~0/<key>` when it does). So a path names exactly one location: no key can reach a mount.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Optional, Sequence

from .. import crypt4gh
from ..config import Config, LocationConfig
from ..protocol import Format, NotFound
from ..typed_config import ConfigError
from .base import Storage
from .local import BARE_ALIAS, safe_key, visible

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


#: index files a format's reader looks for beside its data file `x<ext>`: `x<ext><suffix>`
#: and `x<suffix>` (the `index_candidates` of formats/bam.py and formats/cram.py, the `.fai`
#: of formats/fasta.py, the `.gzi` of BGZF files). The data extensions themselves come from
#: the format handlers (`Htsget.handlers`), which know nothing of their indexes' names.
INDEX_SUFFIXES: dict[Format, tuple[str, ...]] = {
    Format.BAM: (".bai", ".csi", ".gzi"),
    Format.CRAM: (".crai",),
    Format.VCF: (".tbi", ".csi", ".gzi"),
    Format.BCF: (".csi", ".gzi"),
    Format.FASTA: (".fai", ".gzi"),
    Format.FASTQ: (".fai", ".gzi"),
}

_ANY = "(?s:.*)"
#: group texts that mean something else away from their place in the regex: backreferences,
#: anchors, lookarounds, conditionals, inline flags (such a group stands for "any text")
_CONTEXTUAL = re.compile(r"\\[0-9bBAZzg]|\(\?P=|\(\?\(|\(\?<?[=!]|[\^$]|\(\?[a-zA-Z-]+\)")


def _group_texts(compiled: re.Pattern[str]) -> Optional[dict[str, str]]:
    """The source text of each capturing group of `compiled`, by number and by name ("0":
    the whole pattern); None when this scan disagrees with `re` about the groups."""
    pattern, texts = compiled.pattern, {"0": compiled.pattern}
    stack: list[tuple[int, Optional[int], Optional[str]]] = []
    n, i = 0, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":  # a character class: "]" first is literal, escapes skip a character
            j = i + 1
            j += pattern.startswith("^", j)
            j += pattern.startswith("]", j)
            while j < len(pattern) and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            i = j + 1
            continue
        if c == "(":
            if pattern.startswith(("(?#", "(?("), i):  # a comment; a conditional's condition
                end = pattern.find(")", i)
                if end < 0:
                    return None
                if pattern.startswith("(?(", i):
                    stack.append((i, None, None))
                i = end + 1
                continue
            if pattern.startswith("(?P<", i):
                end = pattern.find(">", i)
                n += 1
                stack.append((end + 1, n, pattern[i + 4 : end]))
                i = end + 1
                continue
            if pattern.startswith("(?", i):
                stack.append((i, None, None))
            else:
                n += 1
                stack.append((i + 1, n, None))
        elif c == ")":
            if not stack:
                return None
            start, number, name = stack.pop()
            if number is not None:
                texts[str(number)] = pattern[start:i]
                if name:
                    texts[name] = pattern[start:i]
        i += 1
    if stack or n != compiled.groups:
        return None
    for name, number in compiled.groupindex.items():
        if name not in texts or texts[name] != texts.get(str(number)):
            return None
    return texts


def template_pattern(template: str, compiled: re.Pattern[str], exact: bool = True) -> str:
    """A regex for every text `substitute(template, compiled.fullmatch(id))` can give: the
    template's literal parts, and for each group reference what that group matches (or
    nothing: a group that takes no part gives ""). A group whose text depends on its place
    in the regex (or every group, unless `exact`) stands for any text: the pattern may
    admit more than the location produces, never less."""
    groups = _group_texts(compiled) if exact and not compiled.flags & re.VERBOSE else None
    letters = "".join(
        letter
        for flag, letter in ((re.IGNORECASE, "i"), (re.DOTALL, "s"), (re.ASCII, "a"))
        if compiled.flags & flag
    )
    out, pos = [], 0
    for m in _GROUP_REF.finditer(template):
        out.append(re.escape(template[pos : m.start()]))
        pos = m.end()
        if m.group(3):
            out.append(re.escape("$"))
            continue
        ref = m.group(1) or m.group(2)
        text = (groups or {}).get(str(int(ref)) if ref.isdigit() else ref)
        if text is None or _CONTEXTUAL.search(text):
            out.append(_ANY)
        else:
            out.append(f"(?:(?{letters}:{text}))?" if letters else f"(?:{text})?")
    out.append(re.escape(template[pos:]))
    return "".join(out)


def stem_pattern(location: LocationConfig) -> re.Pattern[str]:
    """Every key stem `Resolver.matches` can give for `location` (bucket prefix included)."""
    compiled = re.compile(location.regex)

    def build(exact: bool) -> re.Pattern[str]:
        text = template_pattern(location.substitution, compiled, exact)
        if location.backend == "s3" and location.bucket and "$" in location.bucket:
            text = template_pattern(location.bucket, compiled, exact) + "/" + text
        return re.compile(text)

    try:
        return build(True)
    except re.error:  # a group's text does not stand on its own (e.g. a name used twice)
        return build(False)


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
        #: location index by /data mount segment ("" and "~0" for an unnamed first location)
        self._mounted: dict[str, int] = {}
        #: per location, every key stem it can produce (see `stem_pattern`)
        self._stems: list[re.Pattern[str]] = []
        for i, loc in enumerate(config.locations):
            mount = mount_name(i, loc)
            try:
                storage = storage_factory(loc, mount, config)
                storage = crypt4gh.wrap(storage, loc, mount, config, i)  # locations with keys
            except ValueError as err:  # e.g. an invalid bucket name, a missing backend
                raise ConfigError(str(err), f"locations[{i}]") from None
            self.rules.append((re.compile(loc.regex), loc, storage))
            self._stems.append(stem_pattern(loc))
            self.mounts[mount] = storage
            self._mounted[mount] = i
            if not mount:
                self.mounts[BARE_ALIAS] = storage
                self._mounted[BARE_ALIAS] = i

    def matches(self, id: str, fmt: Optional[Format] = None) -> Iterator[Match]:
        """Every location whose regex matches `id` (and serves `fmt`), in order. A location
        whose key would have a hidden part (a segment starting with ".", or empty) does not
        match: /data would not serve it."""
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
            if not visible(key):
                continue
            yield Match(storage, key, location)

    def _split(self, path: str) -> tuple[Optional[int], str]:
        """(location index, key) of a /data path; None for a path that names no location.
        A path starting with "~" always names a mount: never a key of the bare one."""
        if path.startswith("~"):
            head, _, rest = path.partition("/")
            return self._mounted.get(head), rest
        return self._mounted.get(""), path

    def mount_for(self, path: str) -> tuple[Optional[Storage], str]:
        """Split a /data path into (storage, key) by its optional leading ~mount segment."""
        i, key = self._split(path)
        return (None, path) if i is None else (self.rules[i][2], key)

    def data_object(
        self, path: str, extensions: Mapping[Format, Sequence[str]]
    ) -> Optional[tuple[Storage, str]]:
        """(storage, key) of a /data path when a ticket could name it, else None.

        `extensions` are the data files' suffixes by format (the engine's handlers'). The key
        must be a data file of a format its location serves, or one of that file's indexes
        (`INDEX_SUFFIXES`); have no hidden part; have a stem the location's substitution can
        produce; and (local files) lead, symlinks resolved, to a file that passes the same
        name checks. Locations whose tickets point elsewhere (S3 presigned, url redirect)
        serve nothing here."""
        i, key = self._split(path)
        if i is None:
            return None
        _, location, storage = self.rules[i]
        served_here = location.backend == "file" or location.mode == "proxy"
        if isinstance(storage, crypt4gh.Crypt4ghStorage):
            # `x.c4gh`: stored ciphertext, for mode-1 tickets that point here; `x`: its
            # decrypted view (mode 2), wherever the location's own tickets point
            cipher = key.endswith(".c4gh")
            if (not served_here) if cipher else (not location.allow_plaintext):
                return None
            if cipher:
                found = self._plain_object(i, key[:-len(".c4gh")], extensions)
                return None if found is None else (storage.inner, key)
        elif not served_here:
            return None
        return self._plain_object(i, key, extensions)

    def _plain_object(
        self, i: int, key: str, extensions: Mapping[Format, Sequence[str]]
    ) -> Optional[tuple[Storage, str]]:
        """`data_object`'s name checks of `key` in location `i`."""
        _, location, storage = self.rules[i]
        if safe_key(key) != key or not visible(key):
            return None
        formats = [Format(f.upper()) for f in location.formats or ()] or list(extensions)
        stems = _stems(key, formats, extensions)
        if not any(visible(stem) and self._stems[i].fullmatch(stem) for stem in stems):
            return None
        resolved_key = getattr(storage, "resolved_key", None)
        if resolved_key is not None:
            try:
                real = str(resolved_key(key))
            except NotFound:
                return None
            if real != key and not (visible(real) and _stems(real, formats, extensions)):
                return None
        return storage, key


def _stems(key: str, formats: Sequence[Format], extensions: Mapping[Format, Sequence[str]]
           ) -> list[str]:
    """The stems `key` is a data or index file of: "x" for x.bam, x.bam.bai and x.bai."""
    out = []
    for fmt in formats:
        suffixes = INDEX_SUFFIXES.get(fmt, ())
        for ext in extensions.get(fmt, ()):
            for tail in (ext, *(ext + s for s in suffixes), *suffixes):
                if key.endswith(tail) and len(key) > len(tail):
                    out.append(key[: -len(tail)])
    return out
