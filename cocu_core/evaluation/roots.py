"""Where each benchmark lives, and the error for a missing evaluation input (cheap: no torch)."""

from __future__ import annotations

from pathlib import Path

from cocu_core.config import PipelineConfig
from cocu_core.errors import CocuError
from cocu_core.layout import toy_split


class EvaluationError(FileNotFoundError, CocuError):
    """An evaluation input is missing (no checkpoint, no dataset folder); the message says what to do."""


def dataset_root(cfg: PipelineConfig, name: str) -> Path:
    """Why: one place that says where each benchmark lives (the toy val split by default for `toy`)."""
    if name in cfg.eval.roots:
        return Path(cfg.eval.roots[name]).expanduser()
    if name == "toy":
        return toy_split(cfg, "val")
    if name == "voc" and cfg.eval.voc_root:
        return Path(cfg.eval.voc_root).expanduser()
    raise EvaluationError(f"no folder for dataset '{name}': set eval.roots.{name} (or eval.voc_root for voc)")
