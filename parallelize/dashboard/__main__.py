"""``python -m parallelize.dashboard``: the parallelize-dashboard command."""

from ._cli import main

raise SystemExit(main())
