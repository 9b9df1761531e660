"""The registered GroupViT configs: the paper's GroupViT-S and the toy world's small one."""

from __future__ import annotations

from cocu_core.model.groupvit import GroupViTConfig
from cocu_core.model.registry import register_model


@register_model("groupvit-s")
def groupvit_s() -> GroupViTConfig:
    """Why: the paper's GroupViT-S (GV configs/group_vit_gcc_yfcc_30e.yml)."""
    return GroupViTConfig(name="groupvit-s")


@register_model("groupvit-toy")
def groupvit_toy() -> GroupViTConfig:
    """Why: a GroupViT for 64x64 toy images that trains on 2 CPU cores (same structure, small widths).

    Gumbel noise is off (GV's ``gumbel=False``: plain straight-through argmax in train mode too). At the toy
    budget (230 steps) the assignment logits' top-1/top-2 margin stays near 0.04 while Gumbel differences
    spread ~1.8, so every training assignment is random and the groups never specialise (benchmarks/RESULTS.md,
    "grouping collapse"); GV's 30 epochs on millions of pairs give the logits time to outgrow the noise.
    """
    return GroupViTConfig(
        name="groupvit-toy", image_size=64, patch_size=8, vision_width=128, vision_heads=4, depths=(2, 1, 1),
        num_group_tokens=(16, 8, 0), num_output_groups=(16, 8), drop_path_rate=0.0, gumbel=False,
        context_length=32, text_width=128, text_layers=2, text_heads=2, proj_hidden=512, embed_dim=128,
    )
