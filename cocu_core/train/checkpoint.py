"""Training checkpoints: atomic, self-describing, resumable, and refused when they belong to another model.

A checkpoint is one ``torch.save`` file holding the model config (so evaluation can rebuild the model
without the training config), the model, optimiser and schedule states, the RNG states, the data
position (epoch, step within it, global step) and the loss curve so far. Step checkpoints are
``step_00000120.pt`` in ``<train dir>/checkpoints/``; the last few are kept; ``final.pt`` is written
when training ends.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from cocu_core.errors import CocuError
from cocu_core.io import atomic_path

FORMAT = "cocu-groupvit"
CHECKPOINT_VERSION = 1
_STEP_RE = re.compile(r"^step_(\d{8})\.pt$")


class CheckpointError(ValueError, CocuError):
    """A checkpoint that cannot be used here: unreadable, another format, or another model config."""


def step_path(directory: Path, step: int) -> Path:
    """Why: zero-padded names sort by step, so the newest is the last one."""
    return Path(directory) / f"step_{step:08d}.pt"


def list_step_checkpoints(directory: Path) -> list[Path]:
    """Why: resume picks the newest finished checkpoint; temp files of a killed write never match."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _STEP_RE.match(p.name))


def rng_state() -> dict[str, Any]:
    """Why: every generator the step touches is restored on resume."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Why: the counterpart of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Why: write to a temp name and rename, so a kill mid-write never leaves a truncated checkpoint."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": CHECKPOINT_VERSION, **payload}, tmp)


def load_checkpoint(path: Path, model_config: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Why: read a checkpoint and refuse, with a clear message, one of another format or model config."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"{p} is not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a CoCu GroupViT checkpoint (no '{FORMAT}' format tag)")
    if ck.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{p}: checkpoint version {ck.get('version')}, this code reads {CHECKPOINT_VERSION}")
    if model_config is not None and ck.get("model_config") != model_config:
        theirs, ours = ck.get("model_config") or {}, model_config
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise CheckpointError(
            f"{p} was trained with another model config ({ck.get('model_name')!r}); differing fields: "
            + ", ".join(f"{k}: {theirs.get(k)!r} vs {ours.get(k)!r}" for k in diff[:6])
        )
    return ck


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Why: step checkpoints of a long run would fill the disk; keep the newest few."""
    for p in list_step_checkpoints(directory)[:-keep]:
        p.unlink(missing_ok=True)


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Why: evaluation accepts our checkpoints (a .pt file or a train folder) and Hugging Face GroupViT folders."""
    from cocu_core.model import GroupViTConfig, build_model

    p = Path(path)
    if p.is_dir():
        if (p / "config.json").is_file():
            from cocu_core.model.hf_adapter import load_hf_groupvit

            return load_hf_groupvit(p).to(device).eval()
        for cand in (p / "final.pt", *reversed(list_step_checkpoints(p / "checkpoints"))):
            if cand.is_file():
                p = cand
                break
        else:
            raise CheckpointError(f"{path}: no final.pt, step checkpoint or Hugging Face config.json in this folder")
    ck = load_checkpoint(p)
    model = build_model(GroupViTConfig.from_dict(ck["model_config"]))
    model.load_state_dict(ck["model"])
    return model.to(device).eval()
