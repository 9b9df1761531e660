"""`python -m cocu_core.cli`: the library's own command line (no Prefect commands)."""

from cocu_core.cli import main

raise SystemExit(main())
