"""`python -m htsgetr` is the `htsgetr` command."""

from .cli import main

raise SystemExit(main())
