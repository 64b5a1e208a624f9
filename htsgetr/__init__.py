"""htsgetr: a GA4GH htsget 1.3 server with exact byte ranges, and its Python API.

    from htsgetr import Htsget, Query, Region
    htsget = Htsget.from_data_dir("/data")
    ticket = htsget.ticket(Query("reads", "NA12878", reference_name="chr1", end=100_000))
    ticket.to_json()  # {"htsget": {"format": "BAM", "urls": [...]}}

`htsgetr.client.fetch(url, "out.bam")` downloads a region from any htsget server.
docs/api.md has more.
"""

from ._version import __version__
from .app import create_app
from .config import Config, load_config
from .engine import Htsget
from .protocol import (
    Block,
    Class,
    Endpoint,
    Format,
    HtsgetError,
    InternalError,
    InvalidAuthentication,
    InvalidInput,
    InvalidRange,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    Query,
    Region,
    Ticket,
    UnsupportedFormat,
    UnsupportedMediaType,
    UpstreamError,
)
from .typed_config import ConfigError

__all__ = [
    "Block",
    "Class",
    "Config",
    "ConfigError",
    "Endpoint",
    "Format",
    "Htsget",
    "HtsgetError",
    "InternalError",
    "InvalidAuthentication",
    "InvalidInput",
    "InvalidRange",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "Query",
    "Region",
    "Ticket",
    "UnsupportedFormat",
    "UnsupportedMediaType",
    "UpstreamError",
    "__version__",
    "create_app",
    "load_config",
]
