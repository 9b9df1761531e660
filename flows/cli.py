"""The `cocu` console script: every `cocu_core` sub-command plus the ones that start Prefect flows.

Why here: `cocu_core` is a library without Prefect; commands that run flows or create deployments
live with the flows and are added to the same command registry (`cocu_core.cli.command`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cocu_core import cli as core_cli
from cocu_core.cli import _load, _with_config, command


def cmd_run(args: argparse.Namespace) -> int:
    """Run the `cocu_pipeline` Prefect flow for a config (cached stages are skipped; a rerun resumes)."""
    _load(args)  # a config mistake is one clear line before Prefect starts
    from flows.pipeline import cocu_pipeline

    result = cocu_pipeline(config_path=str(Path(args.config).resolve()), overrides=list(args.set or []))
    print(result.get("summary", "") if isinstance(result, dict) else result)
    return 0


command("run", lambda p: _with_config(p, required=True))(cmd_run)


def main(argv: list[str] | None = None) -> int:
    """Why: the console-script entry (`cocu`), over the shared registry."""
    return core_cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
