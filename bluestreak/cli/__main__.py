"""``python -m bluestreak.cli``: the command line, as ``python -m bluestreak`` and the ``bluestreak`` script."""

from .main import main

raise SystemExit(main())
