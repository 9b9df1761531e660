"""GPU smoke test (`-m gpu`; skipped where CUDA is absent): two bf16 training steps of the real loop, then the
zero-shot evaluation of the checkpoint they wrote, both on CUDA. Why: every other test runs on CPU in fp32, so
the autocast path (`train.precision: auto` = bf16 on CUDA) and the evaluation's device handling are only
exercised here."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cocu_core.config import ToyWorldConfig, config_from_dict
from train_fixtures import archive_row, write_arch, write_shards

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
TINY = {"vision_width": 64, "vision_heads": 2, "text_width": 64, "text_heads": 2, "proj_hidden": 128,
        "embed_dim": 64}


def test_two_bf16_steps_then_evaluation_on_cuda(tmp_path: Path):
    from cocu_core.stages.evaluate import evaluate_stage
    from cocu_core.toyworld.generate import generate_split
    from cocu_core.train.loop import autocast_for, train_loop

    with autocast_for(torch.device("cuda"), "auto"):  # `auto` on CUDA is bf16 autocast
        assert (torch.ones(2, 2, device="cuda") @ torch.ones(2, 2, device="cuda")).dtype == torch.bfloat16
    write_shards(tmp_path / "shards", 16, per_shard=8)
    write_arch(tmp_path / "cocu", [archive_row(i) for i in range(16)], "cocu")
    generate_split(tmp_path / "val", "val", 2, ToyWorldConfig(n_web=0, n_train=0, n_val=2, seed=1), workers=1)
    cfg = config_from_dict({"workdir": str(tmp_path / "w"), "train": {
        "model": "groupvit-toy", "model_overrides": TINY, "batch_size": 8, "epochs": 1, "max_steps": 2,
        "device": "cuda", "precision": "auto", "augment": "none", "checkpoint_every": 2, "log_every": 1},
        "eval": {"datasets": ["toy"], "roots": {"toy": str(tmp_path / "val")}, "device": "cuda", "panels": 0}})
    rep = train_loop(cfg, tmp_path / "shards", tmp_path / "cocu", tmp_path / "train", "cocu", progress=False,
                     log=lambda m: None)
    assert rep["steps"] == 2 and math.isfinite(rep["last_loss"])
    ev = evaluate_stage(cfg, checkpoint=tmp_path / "train" / "final.pt", out_dir=tmp_path / "ev", progress=False,
                        log=lambda m: None)
    seg = ev["segmentation"]["toy"]
    assert seg["images"] == 2 and set(seg["per_class_iou"])  # a score per class, computed on the GPU
    assert seg["mIoU"] is not None and math.isfinite(seg["mIoU"])
