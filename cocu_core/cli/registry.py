"""The command registry every `cocu` sub-command registers into, and the helpers they share (config arguments,
user errors): one module below the commands, so no command imports the package that imports it."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from cocu_core.config import PipelineConfig, deep_merge, load_config, parse_override
from cocu_core.errors import CocuError

DEFAULT_CONFIG = "configs/toy.yaml"


class UserError(CocuError):
    """A mistake the user can fix; printed as one line, exit code 2."""


def load_config_args(args: argparse.Namespace) -> PipelineConfig:
    """Why: `--config` plus every `--set SECTION.KEY=VALUE`, validated as one config."""
    overrides: dict = {}
    for item in getattr(args, "set", None) or []:
        overrides = deep_merge(overrides, parse_override(item))
    return load_config(args.config, overrides)


def progress_bar(total: int, desc: str):
    """Why: a bar on a terminal, none in CI logs."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, disable=not sys.stderr.isatty() and os.environ.get("CI") == "true")


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None]]] = {}


def command(name: str, setup: Callable[[argparse.ArgumentParser], None]):
    """Why: modules add sub-commands without editing one big parser function."""

    def deco(fn: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (fn, setup)
        return fn

    return deco


def add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", "-c", default=None if not required else DEFAULT_CONFIG,
                   help=f"pipeline YAML config (default: {DEFAULT_CONFIG})" if required else "pipeline YAML config")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override one config field, e.g. --set curation.variant=v2 (repeatable)")
