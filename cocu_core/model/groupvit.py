"""The two-tower GroupViT (GV ``models/multi_label_contrastive.py``) and its config dataclass.

Image and text towers, each followed by a projection head Linear -> BatchNorm1d -> ReLU -> Linear into the
joint space, and two learnable temperatures (image-text and multi-label), both initialised at log(1/0.07)
and used as ``clamp(exp(s), max=100)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cocu_core.errors import CocuError
from cocu_core.model.layers import ACTIVATIONS
from cocu_core.model.text import TextTransformer, tokenize
from cocu_core.model.vision import AssignAttention, VisionTransformer

LOGIT_SCALE_MAX = 100.0


class ModelConfigError(ValueError, CocuError):
    """A GroupViT config that cannot build a model; the message names the field."""


@dataclass(frozen=True)
class GroupViTConfig:
    """Every architecture choice of a GroupViT; stored in checkpoints via to_dict/from_dict."""

    name: str = "custom"
    # image tower
    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    vision_width: int = 384
    vision_heads: int = 6
    depths: tuple[int, ...] = (6, 3, 3)
    num_group_tokens: tuple[int, ...] = (64, 8, 0)
    num_output_groups: tuple[int, ...] = (64, 8)
    vision_mlp_ratio: float = 4.0
    assign_mlp_ratio: tuple[float, float] = (0.5, 4.0)
    assign_eps: float = 1.0
    gumbel_tau: float = 1.0
    gumbel: bool = True  # GV's GroupingBlock(gumbel=...): Gumbel noise on the train-mode hard assignment
    qkv_bias: bool = True
    drop_path_rate: float = 0.1
    vision_act: str = "gelu"
    # text tower
    vocab_size: int = 49408
    context_length: int = 77
    text_width: int = 256
    text_layers: int = 12
    text_heads: int = 4
    text_mlp_ratio: float = 4.0
    text_act: str = "quick_gelu"
    # heads
    proj_hidden: int = 4096
    embed_dim: int = 256
    logit_scale_init: float = math.log(1 / 0.07)
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("depths", "num_group_tokens", "num_output_groups", "assign_mlp_ratio"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Why: a wrong config fails here, naming the field, not deep inside a forward pass."""
        def bad(msg: str) -> None:
            raise ModelConfigError(f"GroupViT config {self.name!r}: {msg}")

        positive = ("image_size", "patch_size", "in_chans", "vision_width", "vision_heads", "vocab_size",
                    "context_length", "text_width", "text_heads", "proj_hidden", "embed_dim")
        for name in positive:
            if int(getattr(self, name)) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            bad(f"patch_size {self.patch_size} does not divide image_size {self.image_size}")
        if self.vision_width % self.vision_heads:
            bad(f"vision_width {self.vision_width} is not divisible by vision_heads {self.vision_heads}")
        if self.text_width % self.text_heads:
            bad(f"text_width {self.text_width} is not divisible by text_heads {self.text_heads}")
        n = len(self.depths)
        if n < 1 or any(d < 0 for d in self.depths):
            bad(f"depths must be a non-empty list of non-negative ints, got {list(self.depths)}")
        if len(self.num_group_tokens) != n:
            bad(f"num_group_tokens needs one entry per stage ({n}), got {list(self.num_group_tokens)}")
        if len(self.num_output_groups) != n - 1:
            bad(f"num_output_groups needs len(depths) - 1 = {n - 1} entries, got {list(self.num_output_groups)}")
        if self.num_group_tokens[-1] != 0:
            bad("the last stage has no grouping block: num_group_tokens[-1] must be 0")
        if any(g < 1 for g in self.num_group_tokens[:-1]) or any(g < 1 for g in self.num_output_groups):
            bad("every stage but the last needs group tokens and output groups >= 1")
        if len(self.assign_mlp_ratio) != 2:
            bad(f"assign_mlp_ratio needs 2 entries (tokens, channels), got {list(self.assign_mlp_ratio)}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            bad(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.text_layers < 0:
            bad(f"text_layers must be >= 0, got {self.text_layers}")
        for name in ("vision_act", "text_act"):
            if getattr(self, name) not in ACTIVATIONS:
                bad(f"{name} {getattr(self, name)!r} is not one of {sorted(ACTIVATIONS)}")

    @property
    def grid(self) -> int:
        """Why: patches per side at the training resolution."""
        return self.image_size // self.patch_size

    @property
    def num_groups(self) -> int:
        """Why: G_last, the number of segment tokens the image tower ends with."""
        return self.num_output_groups[-1] if self.num_output_groups else self.grid * self.grid

    def to_dict(self) -> dict[str, Any]:
        """Why: plain JSON-able dict for checkpoints and manifests."""
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GroupViTConfig":
        """Why: rebuild from a checkpoint, refusing keys this code does not know (a newer or foreign file)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelConfigError(f"unknown GroupViT config key(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def replace(self, **overrides: Any) -> "GroupViTConfig":
        """Why: overrides with a clear error for a misspelt field."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ModelConfigError(f"unknown GroupViT config override(s) {unknown}; known: {sorted(known)}")
        return dataclasses.replace(self, **overrides)


@dataclass
class ImageFeatures:
    """What the image tower gives evaluation: pooled and per-group embeddings (projected, not normalised)."""

    pooled: torch.Tensor  # (B, D)
    groups: torch.Tensor  # (B, G_last, D)
    attn_soft: list[torch.Tensor] = field(default_factory=list)  # per stage (B, G_i, N_in_i), plain softmax
    attn_hard: list[torch.Tensor] = field(default_factory=list)  # per stage, the hard assignment used


def projection_head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Why: GV's 2-layer ProjectMLP (1x1 convs there) as Linear -> BatchNorm1d -> ReLU -> Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim))


class GroupViT(nn.Module):
    """GroupViT image and text towers with projection heads and both temperatures."""

    def __init__(self, config: GroupViTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.visual = VisionTransformer(
            c.image_size, c.patch_size, c.in_chans, c.vision_width, c.vision_heads, c.depths, c.num_group_tokens,
            c.num_output_groups, c.vision_mlp_ratio, c.assign_mlp_ratio, c.qkv_bias, c.assign_eps, c.gumbel_tau,
            c.drop_path_rate, c.vision_act, c.layer_norm_eps,
        )
        self.text = TextTransformer(c.vocab_size, c.context_length, c.text_width, c.text_layers, c.text_heads,
                                    c.text_mlp_ratio, c.text_act, c.layer_norm_eps)
        self.image_proj = projection_head(c.vision_width, c.proj_hidden, c.embed_dim)
        self.text_proj = projection_head(c.text_width, c.proj_hidden, c.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(c.logit_scale_init)))
        self.multi_label_logit_scale = nn.Parameter(torch.tensor(float(c.logit_scale_init)))
        for m in self.visual.modules():
            if isinstance(m, AssignAttention):
                m.gumbel = c.gumbel

    def tokenize(self, texts: str | Sequence[str]) -> torch.LongTensor:
        """Why: CLIP BPE ids at this model's context length (CPU tensor; move it with the images)."""
        return tokenize(texts, self.config.context_length)

    def patch_grid(self, h: int, w: int) -> tuple[int, int]:
        """Why: the patch-token grid an (h, w) input gives; assignments reshape to it."""
        p = self.config.patch_size
        return h // p, w // p

    def _project(self, head: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """Why: BatchNorm1d wants (N, C); (B, G, C) group tokens are flattened and restored."""
        if x.ndim == 2:
            return head(x)
        return head(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)

    def encode_image(self, images: torch.Tensor, return_attn: bool = False) -> ImageFeatures:
        """Why: pooled and per-group projected embeddings (+ assignments) for zero-shot evaluation.

        Meant for eval mode; in train mode the head's BatchNorm normalises (and updates its statistics with)
        the pooled rows and the group rows as two separate batches, as GV's ``return_feat`` path does.
        """
        self._check_images(images)
        tokens, soft, hard = self.visual(images, return_attn)
        b, g, c = tokens.shape
        # One pass through the head for pooled and groups (BatchNorm sees them separately in train mode).
        if self.image_proj.training:
            pooled, groups = self._project(self.image_proj, tokens.mean(1)), self._project(self.image_proj, tokens)
        else:
            both = self.image_proj(torch.cat([tokens.mean(1), tokens.reshape(b * g, c)], dim=0))
            pooled, groups = both[:b], both[b:].reshape(b, g, -1)
        return ImageFeatures(pooled=pooled, groups=groups, attn_soft=soft, attn_hard=hard)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Why: (N, L) ids -> (N, D) projected text embeddings, not normalised."""
        return self.text_proj(self.text(tokens))

    def logit_scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Why: GV's temperatures as used: clamp(exp(s), max=100) for image-text and multi-label."""
        return (self.logit_scale.exp().clamp(max=LOGIT_SCALE_MAX),
                self.multi_label_logit_scale.exp().clamp(max=LOGIT_SCALE_MAX))

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
        """Why: the training forward: L2-normalised pooled image (B, D) and texts (B, 1+K, D) + temperatures.

        ``texts`` is (B, 1+K, L): the caption then K prompts; a (B, L) tensor counts as captions only (K = 0).
        """
        self._check_images(images)
        if texts.ndim == 2:
            texts = texts.unsqueeze(1)
        if texts.ndim != 3 or texts.shape[0] != images.shape[0]:
            raise ValueError(f"texts must be (B, 1+K, L) with B = {images.shape[0]} images, got {tuple(texts.shape)}")
        tokens, _, _ = self.visual(images)
        image = self.image_proj(tokens.mean(1))
        b, t, length = texts.shape
        text = self.encode_text(texts.reshape(b * t, length)).reshape(b, t, -1)
        scale, ml_scale = self.logit_scales()
        return {"image": F.normalize(image, dim=-1), "text": F.normalize(text, dim=-1),
                "logit_scale": scale, "multi_label_logit_scale": ml_scale}

    def _check_images(self, images: torch.Tensor) -> None:
        """Why: a wrong tensor layout gets a one-line error, not a conv traceback."""
        c = self.config
        if images.ndim != 4 or images.shape[1] != c.in_chans:
            raise ValueError(f"images must be (B, {c.in_chans}, H, W), got {tuple(images.shape)}")
        if images.shape[2] < c.patch_size or images.shape[3] < c.patch_size:
            raise ValueError(f"images of {tuple(images.shape[2:])} px are smaller than one {c.patch_size} px patch")


