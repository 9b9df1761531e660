"""`cocu` command line registry and the sub-commands that need no orchestrator (toy world, doctor, config).

The console script is `flows.cli:main`: it adds the commands that start Prefect flows (`run`, `deploy`)
to this registry, so `cocu_core` never imports Prefect. The other sub-commands live in this package, one module
each (`encoder_report`, `train`, `evaluate`), and register with :func:`command` (`cli/registry.py`).

User mistakes (bad config, missing files) print one clear `error:` line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from cocu_core import __version__
from cocu_core.cli.registry import (COMMANDS, DEFAULT_CONFIG, UserError, add_config_args, command, load_config_args,  # noqa: F401
                                    progress_bar)
from cocu_core.config import ToyWorldConfig
from cocu_core.doctor import run_checks
from cocu_core.env import apply_quiet_env
from cocu_core.errors import CocuError
from cocu_core.stages import format_status, pipeline_status
from cocu_core.toyworld import format_gap, generate_world

apply_quiet_env()  # quiet and offline by default (see ENVIRONMENT.md, trap 11)

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # clip-anytorch, harmless


def cmd_toyworld(args: argparse.Namespace) -> int:
    """Generate the toy world's three splits and print the semantic-gap table."""
    import pyarrow.parquet as pq

    base = load_config_args(args).data.toyworld if args.config else ToyWorldConfig()
    upd = {}
    if args.n is not None:
        # --n sets the train split; web and val keep their proportions to it.
        upd = {"n_train": args.n, "n_web": args.n * 2, "n_val": max(10, args.n // 10)}
    if args.seed is not None:
        upd["seed"] = args.seed
    cfg = base.model_copy(update=upd)
    total = cfg.n_web + cfg.n_train + cfg.n_val
    bar = progress_bar(total, "toy world")
    manifest = generate_world(args.out, cfg, workers=args.workers, progress=lambda s, k, n: bar.update(k), force=args.force)
    bar.close()
    out = Path(args.out)
    print(f"toy world in {out.resolve()}: " + ", ".join(f"{k}={v}" for k, v in manifest["counts"].items())
          + (" (cached)" if manifest.get("cached") else ""))
    print("semantic gap of the train+val captions (the pairs CoCu curates):")
    print(format_gap(pq.read_table(out / "gap.parquet")))
    if manifest.get("named_fraction_web") is not None:
        print(f"web split (the curation encoder's own corpus, stuff named at p_mention_stuff_web="
              f"{cfg.p_mention_stuff_web}): {100 * manifest['named_fraction_web']:.1f}% of present concepts named")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Smoke check: the dependency set imports, the torchvision workaround, WordNet, config files."""
    ok = run_checks(print)
    return 0 if ok else 1


def cmd_config(args: argparse.Namespace) -> int:
    """Validate a config file and print it with every default filled in."""
    import yaml

    cfg = load_config_args(args)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return 0


def _setup_toyworld(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder for the web/train/val splits")
    p.add_argument("--n", type=int, default=None, help="train-split size (web = 2n, val = n/10)")
    p.add_argument("--seed", type=int, default=None, help="generator seed (default: from config or 0)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (output is identical for any value)")
    p.add_argument("--force", action="store_true", help="regenerate even if the folder is up to date")
    add_config_args(p)


def cmd_status(args: argparse.Namespace) -> int:
    """Show each stage of a config: done / stale / missing, its outputs, and why it is stale."""
    cfg = load_config_args(args)
    rows = pipeline_status(cfg)
    print(format_status(rows, cfg))
    return 0


command("toyworld", _setup_toyworld)(cmd_toyworld)
command("doctor", lambda p: None)(cmd_doctor)
command("config", lambda p: add_config_args(p, required=True))(cmd_config)
command("status", lambda p: add_config_args(p, required=True))(cmd_status)

# The sub-commands of their own modules register after these four (the order `--help` lists them in).
from cocu_core.cli import archives, encoder_report, train, evaluate  # noqa: E402, F401, I001


def build_parser() -> argparse.ArgumentParser:
    """Why: one parser, with `--help` on every sub-command explaining what it does."""
    parser = argparse.ArgumentParser(
        prog="cocu",
        description="CoCu Pipeline: concept curation for language-supervised semantic segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"cocu {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (fn, setup) in COMMANDS.items():
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        p = sub.add_parser(name, help=doc, description=doc)
        setup(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Why: one entry for every registered sub-command (the console script goes through `flows.cli.main`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CocuError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
