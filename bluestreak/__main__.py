"""``python -m bluestreak``: the command line (see :mod:`bluestreak.cli`)."""

from .cli import main

raise SystemExit(main())
