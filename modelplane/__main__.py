"""``python -m modelplane`` is the ``modelplane`` console script."""

from modelplane.cli import main

raise SystemExit(main())
