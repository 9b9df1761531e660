"""Which runs the ablation makes: one derived config per seed, the arms available, and the curated archives each arm
needs, checked before any training (one line naming the folder and the command that makes it)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


from cocu_core.config import TRAIN_VARIANTS, ConfigError, PipelineConfig, config_from_dict
from cocu_core.io import (read_manifest)
from cocu_core.stages.train import ARCHIVE_FOR

from cocu_core.errors import CocuError
from cocu_core.layout import ablation_dir, stage_dir, toy_split  # noqa: F401  (ablation_dir re-exported)


ARM_LABELS = {
    "baseline": "baseline: caption nouns (GroupViT)",
    "v1": "#1 language-driven + naive ranking + naive sampling",
    "v2": "#2 vision-driven + naive ranking + naive sampling",
    "v3": "#3 vision-driven + T2V ranking + naive sampling",
    "cocu": "#4 CoCu: vision-driven + T2V ranking + cluster sampling",
    "topk-release": "authors' release: top-3 CoCu concepts, no sampling",
    "oracle": "oracle: the image's ground-truth concepts",
}


class AblationError(FileNotFoundError, CocuError):
    """An input of the ablation is missing (a variant's archives, the toy world); the message says how to make it."""


def run_dir(out: Path, arm: str, seed: int) -> Path:
    """Why: each (arm, seed) run has its own train and evaluate folders, so no run overwrites another."""
    return out / "runs" / arm / f"seed{seed}"


def arm_config(cfg: PipelineConfig, seed: int) -> PipelineConfig:
    """Why: every arm gets the same derived config (budget, seed, device); only the train variant differs.

    Evaluation panels are off in the runs: the ablation draws its own maps, baseline beside CoCu."""
    data = cfg.model_dump(mode="json")
    data["train"].update(seed=seed, epochs=cfg.ablation.epochs, device=cfg.ablation.device)
    data["eval"].update(device=cfg.ablation.device, panels=0, save_predictions=None, checkpoint=None)
    if "toy" not in data["eval"]["datasets"]:
        data["eval"]["datasets"] = ["toy"] + list(data["eval"]["datasets"])
    return config_from_dict(data, "<ablation>")


def split_arms(arms: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Why: an arm the installed trainer does not know yet (e.g. `oracle`) is reported as not available, not fatal."""
    ok = [a for a in arms if a in TRAIN_VARIANTS]
    missing = {a: f"train variant '{a}' is not available in this installation (cocu_core.config.TRAIN_VARIANTS)"
               for a in arms if a not in TRAIN_VARIANTS}
    return ok, missing


def needed_curations(arms: Sequence[str]) -> list[str]:
    """Why: the curation variants whose archives the arms read (the oracle builds its own from ground truth)."""
    out: list[str] = []
    for a in arms:
        v = ARCHIVE_FOR.get(a) if a != "oracle" else None
        if v and v not in out:
            out.append(v)
    return out


def check_inputs(cfg: PipelineConfig, arms: Sequence[str], config_name: str = "CONFIG") -> None:
    """Why: a missing input is one line naming the folder and the command that makes it, before any training."""
    if cfg.data.source != "toyworld":
        raise ConfigError("the ablation needs the toy world's ground truth (stuff/thing classes, missing concepts, "
                          f"oracle prompts); config '{cfg.name}' has data.source '{cfg.data.source}'")
    val = toy_split(cfg, "val")
    if not (val / "pairs.parquet").is_file():
        raise AblationError(f"no toy world val split in {val}; make it with: cocu run -c {config_name} "
                            "(or `cocu ablation -c ...`, which runs every stage it needs)")
    if not read_manifest(stage_dir(cfg, "download")):
        raise AblationError(f"no finished download in {stage_dir(cfg, 'download')}; make it with: cocu run -c "
                            f"{config_name} --only download (or `cocu ablation -c ...`)")
    for v in needed_curations(arms):
        d = stage_dir(cfg, "curate", v)
        shards = sorted(d.glob("shard_*")) if d.is_dir() else []
        if not shards or not all(read_manifest(s) for s in shards):
            users = [a for a in arms if a in needed_for(v)]
            raise AblationError(f"arm(s) {', '.join(users)} need the '{v}' concept archives in {d}; make them with: "
                                f"cocu run -c {config_name} --set curation.variant={v} (or `cocu ablation -c ...`, "
                                "which curates every variant the arms need)")


def needed_for(variant: str) -> list[str]:
    """Why: the arms that read one curation variant's archives, named when those archives are missing."""
    return [a for a, v in ARCHIVE_FOR.items() if v == variant and a != "oracle"]
