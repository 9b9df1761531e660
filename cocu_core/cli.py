"""`cocu` command line registry and the sub-commands that need no orchestrator (toy world, doctor, config).

The console script is `flows.cli:main`: it adds the commands that start Prefect flows (`run`, `deploy`)
to this registry, so `cocu_core` never imports Prefect. Stage modules register their own sub-commands
with :func:`command` (see :func:`_register_plugins`).

User mistakes (bad config, missing files) print one clear `error:` line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Callable

from cocu_core import __version__
from cocu_core.config import ConfigError, PipelineConfig, load_config, parse_override

# Quiet and offline by default (see ENVIRONMENT.md, trap 11).
for _k, _v in {
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_k, _v)

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # clip-anytorch, harmless

DEFAULT_CONFIG = "configs/toy.yaml"


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit code 2."""


def _load(args: argparse.Namespace) -> PipelineConfig:
    overrides: dict = {}
    from cocu_core.config import _deep_merge

    for item in getattr(args, "set", None) or []:
        overrides = _deep_merge(overrides, parse_override(item))
    return load_config(args.config, overrides)


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, disable=not sys.stderr.isatty() and os.environ.get("CI") == "true")


def cmd_toyworld(args: argparse.Namespace) -> int:
    """Generate the toy world's three splits and print the semantic-gap table."""
    import pyarrow.parquet as pq

    from cocu_core.config import ToyWorldConfig
    from cocu_core.toyworld import format_gap, generate_world

    base = _load(args).data.toyworld if args.config else ToyWorldConfig()
    upd = {}
    if args.n is not None:
        # --n sets the train split; web and val keep their proportions to it.
        upd = {"n_train": args.n, "n_web": args.n * 2, "n_val": max(10, args.n // 10)}
    if args.seed is not None:
        upd["seed"] = args.seed
    cfg = base.model_copy(update=upd)
    total = cfg.n_web + cfg.n_train + cfg.n_val
    bar = _progress(total, "toy world")
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
    from cocu_core.doctor import run_checks

    ok = run_checks(print)
    return 0 if ok else 1


def cmd_config(args: argparse.Namespace) -> int:
    """Validate a config file and print it with every default filled in."""
    import yaml

    cfg = _load(args)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None]]] = {}


def command(name: str, setup: Callable[[argparse.ArgumentParser], None]):
    """Why: modules add sub-commands without editing one big parser function."""

    def deco(fn: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (fn, setup)
        return fn

    return deco


def _with_config(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", "-c", default=None if not required else DEFAULT_CONFIG,
                   help=f"pipeline YAML config (default: {DEFAULT_CONFIG})" if required else "pipeline YAML config")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override one config field, e.g. --set curation.variant=v2 (repeatable)")


def _setup_toyworld(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder for the web/train/val splits")
    p.add_argument("--n", type=int, default=None, help="train-split size (web = 2n, val = n/10)")
    p.add_argument("--seed", type=int, default=None, help="generator seed (default: from config or 0)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (output is identical for any value)")
    p.add_argument("--force", action="store_true", help="regenerate even if the folder is up to date")
    _with_config(p)


def cmd_status(args: argparse.Namespace) -> int:
    """Show each stage of a config: done / stale / missing, its outputs, and why it is stale."""
    from cocu_core.status import format_status, pipeline_status

    cfg = _load(args)
    rows = pipeline_status(cfg)
    print(format_status(rows, cfg))
    return 0


command("toyworld", _setup_toyworld)(cmd_toyworld)
command("doctor", lambda p: None)(cmd_doctor)
command("config", lambda p: _with_config(p, required=True))(cmd_config)
command("status", lambda p: _with_config(p, required=True))(cmd_status)


PLUGINS = ("cocu_core.encoder.cli", "cocu_core.train.cli", "cocu_core.evaluation.cli")


def _register_plugins() -> None:
    """Why: stage modules that add sub-commands register on import; missing optional ones are skipped."""
    import importlib

    for mod in PLUGINS:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name is None or not exc.name.startswith("cocu_core"):
                raise  # a missing third-party package is a real error; a stage module not written yet is skipped


def build_parser() -> argparse.ArgumentParser:
    """Why: one parser, with `--help` on every sub-command explaining what it does."""
    _register_plugins()
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
    except (ConfigError, UserError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run through the imported module so plugin sub-commands register into the same COMMANDS table.
    from cocu_core.cli import main as _main

    raise SystemExit(_main())
