"""``python -m bench``: run the benchmark suite (see bench/README.md; ``--help`` for the options)."""

from .cli import main

raise SystemExit(main())
