"""`python -m monitor` is the same as the `calmon` console script."""

from monitor.cli import main

raise SystemExit(main())
