"""The pipeline's stages in order, where each writes, and which of them a run executes (`--only`, `--from`).

Why here: the command line, the Prefect flows and `cocu status` must agree on one list of names.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

from cocu_core.config import ConfigError, PipelineConfig

STAGES: tuple[str, ...] = ("toyworld", "download", "encoder", "embed", "index", "vocabulary", "concepts", "curate",
                           "semantic_gap", "train", "evaluate")
TOY_ONLY = ("toyworld", "semantic_gap")
OPTIONAL_MODULES = {"train": "cocu_core.train.stage", "evaluate": "cocu_core.evaluation.stage"}


class StageError(ConfigError):
    """A run names a stage that does not exist or does not apply to its config."""


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def applicable_stages(cfg: PipelineConfig) -> list[str]:
    """Why: the toy world and its gap report exist only for `data.source: toyworld`; train/evaluate once written."""
    out = []
    for s in STAGES:
        if s in TOY_ONLY and cfg.data.source != "toyworld":
            continue
        if s in OPTIONAL_MODULES and not _module_exists(OPTIONAL_MODULES[s]):
            continue
        out.append(s)
    return out


def check_stage_name(name: str, option: str = "stage") -> str:
    """Why: a misspelt stage is one clear line listing the valid names, before anything runs."""
    key = name.strip().replace("-", "_")
    if key not in STAGES:
        raise StageError(f"{option} '{name}' is not a stage; stages: {', '.join(STAGES)}")
    return key


def select_stages(cfg: PipelineConfig, only: Optional[str] = None, from_stage: Optional[str] = None) -> list[str]:
    """Why: `only` runs one stage, `from_stage` that stage and every later one; neither runs them all."""
    if only and from_stage:
        raise StageError("give --only or --from, not both")
    stages = applicable_stages(cfg)
    for given, option in ((only, "--only"), (from_stage, "--from")):
        if given:
            key = check_stage_name(given, option)
            if key not in stages:
                why = ("needs data.source: toyworld" if key in TOY_ONLY
                       else f"its module {OPTIONAL_MODULES.get(key)} is not installed")
                raise StageError(f"{option} '{given}' does not apply to config '{cfg.name}' ({why}); "
                                 f"stages here: {', '.join(stages)}")
            return [key] if option == "--only" else stages[stages.index(key):]
    return stages


def stage_dir(cfg: PipelineConfig, stage: str) -> Path:
    """Why: where a stage writes (curate, train and evaluate: the configured variant's folder)."""
    w = cfg.workpath
    if stage == "concepts":
        return w / "concept_emb"
    if stage == "curate":
        return w / "curate" / cfg.curation.variant
    if stage == "semantic_gap":
        return w / "reports" / "semantic_gap"
    if stage in ("train", "evaluate"):
        return w / stage / (cfg.train.variant or cfg.curation.variant)
    return w / stage


def _list_files(path: Path, input_format: str) -> list[Path]:
    """Why: `data.url_list` is one list file, or a folder of them (read in name order)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lstrip(".") == input_format
                       and not p.name.startswith("."))
        if not files:
            raise FileNotFoundError(f"data.url_list folder {path} holds no *.{input_format} file")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"data.url_list not found: {path}")
    return [path]


def _columns(path: Path, input_format: str) -> list[str]:
    if input_format == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise ConfigError(f"data.url_list {path} is not a Parquet file ({type(exc).__name__}: {exc})") from None
    if input_format in ("csv", "tsv"):
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            header = fh.readline().rstrip("\r\n")
        return [c.strip().strip('"') for c in header.split("," if input_format == "csv" else "\t")]
    raise ConfigError(f"data.input_format '{input_format}': a caption column is required; use parquet, csv or tsv")


def preflight(cfg: PipelineConfig) -> None:
    """Why: mistakes in the pair list (missing file, missing column) are one clear line before any stage runs,
    on the command line and in a deployment's flow-run state alike; only headers are read."""
    d = cfg.data
    if d.source != "url_list":
        return
    for f in _list_files(Path(d.url_list or "").expanduser(), d.input_format):
        cols = _columns(f, d.input_format)
        for col, key in ((d.url_col, "data.url_col"), (d.caption_col, "data.caption_col")):
            if col not in cols:
                raise ConfigError(f"{key} '{col}' is not a column of {f} (columns: {', '.join(cols)})")
