"""htsgetr: a GA4GH htsget 1.3 server with exact byte ranges."""

from ._version import __version__
from .app import create_app
from .config import Config, load_config
from .engine import Htsget
from .protocol import Format, Query, Region, Ticket

__all__ = [
    "Config",
    "Format",
    "Htsget",
    "Query",
    "Region",
    "Ticket",
    "__version__",
    "create_app",
    "load_config",
]
