"""Where every stage writes under the work folder: the one table of folder names.

Why one table: the stages, `cocu status`, the flows and the ablation all join these paths; written out by hand
in each (65 joins before), a renamed folder would silently split the pipeline. Folder names are on-disk
behaviour and never change; where a folder's name differs from its stage's, `FOLDERS` says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from cocu_core.config import PipelineConfig

# stage -> folder under the work folder (stages not listed write to a folder of their own name)
FOLDERS: dict[str, str] = {"concepts": "concept_emb", "semantic_gap": "reports/semantic_gap"}
# stages whose folder has one sub-folder per variant
PER_VARIANT = ("curate", "train", "evaluate")
TOY_SPLITS = ("web", "train", "val")


def train_variant(cfg: PipelineConfig, variant: Optional[str] = None) -> str:
    """Why: `--variant`, else `train.variant`, else the curation variant."""
    return variant or cfg.train.variant or cfg.curation.variant


def stage_dir(cfg: PipelineConfig, stage: str, variant: Optional[str] = None) -> Path:
    """Why: where a stage writes (curate, train and evaluate: a variant's folder, by default the configured one)."""
    base = cfg.workpath / FOLDERS.get(stage, stage)
    if stage == "curate":
        return base / (variant or cfg.curation.variant)
    if stage in ("train", "evaluate"):
        return base / train_variant(cfg, variant)
    return base


def toy_split(cfg: PipelineConfig, split: str) -> Path:
    """Why: the toy world's `web` (encoder corpus), `train` (pairs to curate) and `val` (masks) splits."""
    if split not in TOY_SPLITS:
        raise ValueError(f"toy split '{split}': expected one of {TOY_SPLITS}")
    return stage_dir(cfg, "toyworld") / split


def url_list_dir(cfg: PipelineConfig) -> Path:
    """Why: the toy train split's url list, written while it is served on loopback."""
    return cfg.workpath / "urls"


def training_signal_dir(cfg: PipelineConfig) -> Path:
    """Why: what training sees per arm, kept beside the semantic-gap report it extends."""
    return stage_dir(cfg, "semantic_gap") / "training_signal"


def ablation_dir(cfg: PipelineConfig, out_dir: Optional[str | Path] = None) -> Path:
    """Why: one folder holds every run and the report, beside (never inside) the pipeline's own train folders."""
    return Path(out_dir) if out_dir else cfg.workpath / cfg.ablation.out


def versions_root(workpath: Path, variant: str) -> Path:
    """Why: every variant keeps its own version history beside the working archives."""
    return workpath / "archives" / variant


def run_state_path(cfg: PipelineConfig) -> Path:
    """Why: which stage a run is in, read when it is interrupted."""
    return cfg.workpath / "run_state.json"


def lock_path(cfg: PipelineConfig) -> Path:
    """Why: the work-folder lock every writing run holds (`cocu_core.lock`)."""
    return cfg.workpath / ".cocu.lock"


def output_lock_path(out_dir: Path) -> Path:
    """Why: a training's or evaluation's own folder lock, beside (not in) the folder it may delete and rewrite."""
    return out_dir.parent / f".{out_dir.name}.lock"
