"""Htsget: the public Python API. `Htsget(config).ticket(Query(...))` -> Ticket.

No Flask here: the same object serves the WSGI app, AWS Lambda, the CLI and notebooks.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from typing import Any, Mapping, Optional, Union
from urllib.parse import quote

from . import crypt4gh, turns
from .cache import LRUCache
from .config import Config, LocationConfig, ServerConfig, load_config, load_doc
from .formats.bam import BamHandler
from .formats.base import ByteRange, FormatHandler, Inline, Piece, Source, companions
from .formats.bgzf import DEFAULT_LIMITS, Limits
from .formats.blocks import derived_edge
from .formats.cram import CramHandler
from .formats.cram_recode import MAX_RECUT_BYTES
from .formats.cram_reference import References
from .formats.derived import (
    CRAM_PREFIX,
    MAX_PATH,
    Derived,
    Part,
    Recut,
    bound_inline,
    derived_path,
    parse_derived,
    undeferred,
    version_tag,
)
from .formats.fasta import FastaHandler, FastqHandler
from .formats.vcf import BcfHandler, VcfHandler
from .protocol import (
    UNPLACED,
    Block,
    Class,
    Endpoint,
    Format,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    Query,
    Region,
    Ticket,
    data_uri,
)
from .storage.base import batched, stat_many
from .storage.local import LocalStorage, mount_path, safe_key, visible
from .storage.resolver import Match, Resolver, stem_pattern
from .typed_config import ConfigError

RESERVED_IDS = frozenset({"service-info"})
#: characters a url may grow by after the engine: "?exp=...&sig=..." and a longer host
URL_MARGIN = 128


#: IDs whose locations `Htsget.locate` remembers, at most (past that: start again)
MAX_PLANS = 4096


def default_handlers(config: Optional[Config] = None) -> dict[Format, FormatHandler]:
    """One handler per format; each knows its file extensions, index and byte layout."""
    references = References(tuple(config.cram_reference_path)) if config else None
    limits = Limits.of(config) if config else DEFAULT_LIMITS  # max_index/header_bytes
    return {
        Format.BAM: BamHandler(limits),
        Format.CRAM: CramHandler(limits, references=references,
                                 reproducible=config.cram_reproducible if config else True,
                                 max_recut_bytes=config.cram_max_recut_bytes if config
                                 else MAX_RECUT_BYTES),
        Format.VCF: VcfHandler(limits),
        Format.BCF: BcfHandler(limits),
        Format.FASTA: FastaHandler(),
        Format.FASTQ: FastqHandler(),
    }


class Htsget:
    """Tickets for queries: resolves the ID through the configured locations, lets the
    format's handler compute pieces from the (cached) index and header, and turns them into
    urls. Thread-safe; one per worker process."""

    def __init__(self, config: Config, resolver: Optional[Resolver] = None) -> None:
        self.config = config
        self.resolver = resolver or Resolver(config)
        self.cache = LRUCache(config.cache_entries, config.cache_bytes, config.block_cache_bytes)
        self.handlers = default_handlers(config)
        #: per (ID, format): the matching locations and the keys to look for in each
        self._plans: dict[tuple[str, Format], tuple[tuple[Match, tuple[str, ...]], ...]] = {}

    @classmethod
    def from_data_dir(
        cls, path: Union[str, os.PathLike[str]], *, base_url: Optional[str] = None
    ) -> Htsget:
        """Serve every ID as a file under one directory (`/reads/a/b` -> `a/b.bam`), as
        `htsgetr serve --data-dir` does. Ticket urls of local files point at
        `base_url` (default http://127.0.0.1:8080, where `htsgetr serve` listens) + /data.
        ConfigError when `path` is not a readable directory."""
        config = Config(ticket_server=ServerConfig(base_url=base_url),
                        locations=[LocationConfig(root=os.fspath(path))])
        htsget = cls(config)
        check_storage(htsget.resolver, "data directory", "")
        return htsget

    @classmethod
    def from_config(
        cls, config: Union[Config, str, os.PathLike[str], Mapping[str, Any]]
    ) -> Htsget:
        """From a TOML file's path, a dict shaped like that file, or a `Config`. The HTSGET_*
        environment is not read (`load_config()` reads it). Errors are ConfigError naming
        the key; a location root that does not exist is refused unless `allow_missing`."""
        if isinstance(config, Config):
            loaded, source = config, "configuration"
        elif isinstance(config, Mapping):
            loaded, source = load_doc(config), "configuration"
        else:
            source = os.fspath(config)
            loaded = load_config(source, env={})
        htsget = cls(loaded)
        if not loaded.allow_missing:
            check_storage(htsget.resolver, source, "; allow_missing = true to accept it")
        return htsget

    def locate(self, id: str, fmt: Format) -> Source:
        """The data file for `id` in `fmt`: the first location holding one of its extensions."""
        plan = self._plans.get((id, fmt))  # an ID refused below never gets a plan
        handler = self.handler(fmt)
        if plan is None:  # the locations' answer for an ID does not change: worked out once
            if id in RESERVED_IDS or safe_key(id) is None:
                raise NotFound(f"no {fmt.value} file for ID {id!r}")
            plan = tuple(
                (match, tuple(k for k in (match.key + ext for ext in handler.extensions)
                              if safe_key(k) is not None))
                for match in self.resolver.matches(id, fmt))
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            self._plans[(id, fmt)] = plan
        for match, keys in plan:
            if batched(match.storage):  # remote: the file and its companions in one ask
                stat_many(match.storage, companions(handler, list(keys)))
            for key in keys:
                if match.storage.exists(key):
                    return Source(match.storage, key, self.cache)
            if not match.location.fall_through:
                break
        raise NotFound(f"no {fmt.value} file for ID {id!r}")

    def handler(self, fmt: Format) -> FormatHandler:
        """The format's handler; NotFound when this server has none for it."""
        handler = self.handlers.get(fmt)
        if handler is None:
            raise NotFound(f"format {fmt.value} is not available on this server")
        return handler

    def ticket(self, query: Query, encryption: Optional[crypt4gh.Encryption] = None) -> Ticket:
        """The ticket for `query`: the blocks whose payloads, concatenated, are the file
        (the records of its regions, or its header); HtsgetError subclasses for what the
        server would refuse (NotFound, InvalidInput, ...). `encryption`: the request's
        `encryptionScheme` and client key (Crypt4GH)."""
        turns.begin()
        try:
            return self._ticket(query, encryption)
        finally:
            turns.end()

    def _ticket(self, query: Query, encryption: Optional[crypt4gh.Encryption]) -> Ticket:
        if query.regions is not None and len(query.regions) > self.config.max_regions:
            raise PayloadTooLarge(
                f"{len(query.regions)} regions in one request; at most "
                f"{self.config.max_regions} (max_regions): split the list")
        source = self.locate(query.id, query.format)
        handler = self.handler(query.format)
        encrypted = crypt4gh.post_step(source, query, encryption)  # mode 1, or a refusal
        if query.allowed is not None and query.klass is not Class.HEADER:
            query = restricted(query, handler, source)
        prefetch = getattr(handler, "prefetch", None)
        if prefetch is not None and source.batched:  # remote: what pieces() reads, at once
            prefetch(source, query)
        pieces = handler.pieces(source, query)
        if encrypted is not None:  # no urls of ours in it: no derived blocks either
            return encrypted(undeferred(pieces))
        parts = bound_inline(
            pieces,
            self.config.max_inline_bytes,
            lambda p: self._entry_chars(source, p),
            lambda recut: len(self._derived_path(source, recut)) <= MAX_PATH,
        )
        ticket = Ticket(query.format, [self._block(source, p) for p in turns.paced(parts)])
        if query.regions is None and query.klass is None:
            ticket.md5 = self._md5(source, pieces)
        return ticket

    def _block(self, source: Source, piece: Part) -> Block:
        if isinstance(piece, Inline):
            return Block(data_uri(piece.data), None, piece.klass)
        if isinstance(piece, Derived):
            url = f"{self.config.data_url()}/data/{self._derived_path(source, piece.recut)}"
            return Block(url, None, piece.klass)
        url, headers = source.storage.block_url(source.key, piece.start, piece.end)
        return Block(url, headers, piece.klass)

    def _derived_path(self, source: Source, recut: Recut) -> str:
        """The path below /data/ (percent-encoded) of a derived block."""
        path = derived_path(mount_path(_mount(source), source.key), source.version(), recut)
        return quote(path, safe="/:,;*")

    def _entry_chars(self, source: Source, part: Part) -> int:
        """JSON characters of a non-inline ticket entry, with room for a signature and
        another host (what api/tickets.py may add)."""
        return len(json.dumps(self._block(source, part).to_json())) + URL_MARGIN

    def derived(self, path: str) -> bytes:
        """The bytes of a derived block: `path` below /data/ as `_block` wrote it. NotFound
        for anything else, or when the file changed since (ask for a new ticket)."""
        ref = parse_derived(path)
        cram = ref is not None and ref.prefix == CRAM_PREFIX
        formats = (Format.CRAM,) if cram else (Format.BAM, Format.VCF, Format.BCF)
        source = self._derived_source(ref.data_path, formats) if ref is not None else None
        if ref is None or source is None:
            raise NotFound(f"no such object: {path!r}")
        if version_tag(source.version()) != ref.tag:
            raise NotFound(f"{source.key!r} has changed since the ticket: ask for a new one")
        if not cram:
            return derived_edge(source, ref)
        handler = self.handler(Format.CRAM)
        if not isinstance(handler, CramHandler):
            raise NotFound(f"no such object: {path!r}")
        return handler.derived(source, ref)

    def _derived_source(self, data_path: str, formats: tuple[Format, ...]) -> Optional[Source]:
        """The file of one of `formats` a ticket of some location could name, by its path
        below /data/. Unlike its bytes (`Resolver.data_object`), the re-cuts of a file whose
        tickets point elsewhere (S3 presigned, url redirect) are served here too."""
        extensions = {fmt: self.handler(fmt).extensions for fmt in formats
                      if fmt in self.handlers}
        suffixes = tuple(ext for exts in extensions.values() for ext in exts)
        storage, key = self.resolver.mount_for(data_path)
        if storage is None or not suffixes or not key.endswith(suffixes):
            return None
        if self.resolver.data_object(data_path, extensions) is not None:
            return Source(storage, key, self.cache)
        location = next(loc for _, loc, st in self.resolver.rules if st is storage)
        if location.backend == "file" or location.mode == "proxy":
            return None  # refused by data_object
        fmt = next(f for f, exts in extensions.items() if key.endswith(exts))
        if location.formats and fmt.value not in {f.upper() for f in location.formats}:
            return None
        if safe_key(key) != key or not visible(key):
            return None
        stems = [key[: -len(ext)] for ext in extensions[fmt] if key.endswith(ext)]
        pattern = stem_pattern(location)
        if not any(pattern.fullmatch(stem) for stem in stems):
            return None
        return Source(storage, key, self.cache)

    def _md5(self, source: Source, pieces: list[Piece]) -> Optional[str]:
        """The md5 of a whole-file payload: the stored file's digest when the payload is the
        file byte for byte (sidecar `.md5`, the storage's own, or computed once), else — a
        re-cut header block — computed over the payload itself, once per file version."""
        storage = source.storage
        small = storage.size(source.key) <= self.config.md5_max_bytes
        if not _is_whole_file(source, pieces):
            if isinstance(storage, LocalStorage) and small:
                return source.cached("payload-md5", lambda: _payload_md5(source, pieces),
                                     once=True)
            return None
        sidecar = source.key + ".md5"
        if storage.exists(sidecar):
            text = source.read_all(sidecar).decode("ascii", "replace").split()
            if text and len(text[0]) == 32:
                return text[0].lower()
        md5_of = getattr(storage, "md5", None)  # e.g. S3 single-part ETags
        if md5_of is not None:
            value = md5_of(source.key)
            if value:
                return str(value)
        if isinstance(storage, LocalStorage) and small:
            # hashing pauses (turns.py): requests for the same file meanwhile wait for it
            return source.cached("md5", lambda: _file_md5(storage.path(source.key)), once=True)
        return None


def check_storage(
    resolver: Resolver,
    source: str,
    hint: str = "; --allow-missing or allow_missing = true to start anyway",
) -> None:
    """ConfigError naming the first location whose root (or bucket) is not there: a typo
    would otherwise answer 404 to everything."""
    for i, (_, _, storage) in enumerate(resolver.rules):
        usable = getattr(storage, "check", None)  # local roots, S3 buckets
        try:
            if usable is not None:
                usable()
        except ValueError as err:
            raise ConfigError(
                f"{err} (a typo would answer 404 to everything{hint})", f"locations[{i}]",
                source,
            ) from None


def restricted(query: Query, handler: FormatHandler, source: Source) -> Query:
    """`query` limited to its allowed intervals, record-exact: the requested regions (the
    whole file when none) intersected with them. An empty result is a header-only file."""
    names = getattr(handler, "reference_names", None)
    if names is None:
        raise PermissionDenied(f"restricted access to {query.format.value} is not supported")
    assert query.allowed is not None
    wanted = query.regions
    if wanted is None:
        wanted = tuple(Region(n) for n in names(source))
        if query.endpoint is Endpoint.READS:
            wanted += (Region(UNPLACED),)
    out: list[Region] = []
    for region in wanted:
        for allow in query.allowed:
            if region.reference_name == UNPLACED or allow.reference_name == UNPLACED:
                if region.reference_name == allow.reference_name:
                    out.append(region)
                continue
            if allow.reference_name not in ("", region.reference_name):
                continue
            start = max(region.start or 0, allow.start or 0)
            ends = [e for e in (region.end, allow.end) if e is not None]
            end = min(ends) if ends else None
            if end is None or start < end:
                out.append(Region(region.reference_name, start or None, end))
    return replace(query, regions=tuple(dict.fromkeys(out)), allowed=None, exact=True)


def _mount(source: Source) -> str:
    """The /data mount segment of the file's storage ("" for the bare one)."""
    return str(getattr(source.storage, "mount", ""))


def _is_whole_file(source: Source, pieces: list[Piece]) -> bool:
    """True when concatenating the pieces gives exactly the stored file."""
    pos, size = 0, source.storage.size(source.key)
    for p in pieces:
        if isinstance(p, ByteRange):
            if p.start != pos:
                return False
            pos = p.end
        else:
            # only a trailing EOF marker identical to the file's own tail is allowed
            if pos + len(p.data) != size or source.read(pos, size) != p.data:
                return False
            pos = size
    return pos == size


def _payload_md5(source: Source, pieces: list[Piece]) -> str:
    """md5 of what a client reassembles: inline data as is, byte ranges read from storage."""
    digest = hashlib.md5()
    for p in pieces:
        if isinstance(p, Inline):
            digest.update(p.data)
            continue
        for pos in range(p.start, p.end, 1 << 20):
            turns.pause()
            digest.update(source.read(pos, min(p.end, pos + (1 << 20))))
    return digest.hexdigest()


def _file_md5(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            turns.pause()  # a GB takes seconds: the worker's other requests go between MiBs
            digest.update(chunk)
    return digest.hexdigest()
