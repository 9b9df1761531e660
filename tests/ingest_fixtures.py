"""Shared fixtures for the download/encoder/embed/index tests: small toy worlds with injected faults."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa

for _k, _v in {"NO_ALBUMENTATIONS_UPDATE": "1", "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

from cocu_core.config import PipelineConfig, ToyWorldConfig, config_from_dict  # noqa: E402
from cocu_core.toyworld import generate_world, read_pairs  # noqa: E402

CORRUPT_INDEX = 5
MISSING_INDEX = 7
EMPTY_CAPTION_INDEX = 9


def small_world(root: Path, n_train: int = 240, n_web: int = 400) -> Path:
    """Why: a few hundred real toy pairs render in seconds."""
    generate_world(root, ToyWorldConfig(seed=3, n_web=n_web, n_train=n_train, n_val=10), workers=2)
    return root


def faulty_source(world: Path, out: Path) -> tuple[Path, pa.Table]:
    """Why: a copy of the train split with one corrupt JPEG, one URL to a missing file and one empty caption."""
    split = world / "train"
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = read_pairs(split).to_pylist()
    for r in rows:
        shutil.copy(split / r["file"], out / r["file"])
    (out / rows[CORRUPT_INDEX]["file"]).write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg " * 20)
    rows[MISSING_INDEX]["file"] = "images/does_not_exist.jpg"
    rows[EMPTY_CAPTION_INDEX]["caption"] = ""
    return out, pa.Table.from_pylist(rows, schema=read_pairs(split).schema)


def small_config(workdir: Path, **sections: Any) -> PipelineConfig:
    """Why: test-sized settings for every stage (tiny encoder, small shards), overridable per test."""
    base: dict[str, Any] = {
        "workdir": str(workdir),
        "data": {"shard_size": 100, "processes": 2, "threads": 4, "timeout": 5,
                 "toyworld": {"seed": 3, "n_web": 400, "n_train": 240, "n_val": 10}},
        "encoder": {"epochs": 2, "batch_size": 64, "holdout": 50, "embed_dim": 64, "toy_resnet_width": 8, "toy_vision_width": 64,
                    "toy_vision_layers": 1, "toy_text_width": 64, "toy_text_layers": 1, "inference_batch_size": 64},
        "index": {"recall_sample": 100},
    }
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return config_from_dict(base, "<test>")


# `world_dir` (the session's small world built by `small_world`) is a fixture of tests/conftest.py.


def status_states(text: str) -> dict[str, str]:
    """Why: `cocu status` as {stage: state}: the two-space-indented stage lines only (not the header, a stale stage's
    reasons under it, or the schedule and lock lines after the table)."""
    rows = (ln.split() for ln in text.splitlines() if ln.startswith("  ") and not ln.strip().startswith("-"))
    return {r[0]: r[1] for r in rows if len(r) >= 2}
