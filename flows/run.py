"""`python -m flows.run`: run the pipeline flow in this process (what `cocu run` starts in its own session).

Why a separate process: a terminal's Ctrl-C reaches every process of the foreground group at once,
Prefect's temporary API server included; the server then dies before the flow can record the
interruption and the process spends a minute retrying it. `cocu run` keeps this process (and the
server it starts) out of the terminal's group, forwards one SIGINT here, and this process stops
the running stage, records it as crashed and exits within seconds with one line saying what to do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m flows.run")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--only", default=None)
    p.add_argument("--from", dest="from_stage", default=None)
    return p.parse_args(argv)


def interrupted_line(stage: str | None, config: str) -> str:
    """Why: the one line a user reads after Ctrl-C: where it stopped and that nothing finished is lost."""
    where = f"during stage '{stage}'" if stage else "before the first stage"
    return (f"cocu run: interrupted {where}; finished stages and shards are kept, "
            f"rerun `cocu run -c {config}` to resume")


def main(argv: list[str] | None = None) -> int:
    """Why: run the flow; user errors are one line (exit 2), an interrupt one line (exit 130)."""
    args = parse(argv)
    from cocu_core.config import ConfigError
    from cocu_core.errors import CocuError

    from flows.pipeline import RUN_STATE, cocu_pipeline

    try:
        result = cocu_pipeline(config_path=str(Path(args.config).resolve()), overrides=list(args.set),
                               only=args.only, from_stage=args.from_stage)
    except KeyboardInterrupt:
        print(interrupted_line(RUN_STATE.get("stage"), args.config), file=sys.stderr, flush=True)
        return 130
    except (ConfigError, CocuError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    print(result.get("summary", "") if isinstance(result, dict) else result, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
