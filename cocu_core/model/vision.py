"""GroupViT's image tower: patch tokens and learnable group tokens, grouped by hard assignment stage by stage.

Follows GV ``models/group_vit.py``: patch embedding + LayerNorm + position embedding, then stages of pre-norm
blocks over [image tokens, group tokens]; after each stage with group tokens a grouping block merges the image
tokens into the (MLP-projected) group tokens by a 1-head assignment (softmax over groups, straight-through
hard: Gumbel in train mode, argmax in eval mode, then ``attn / (attn.sum(-1) + assign_eps)``). Group tokens of
a later stage start at zero and are added to a MixerMlp of the previous stage's group tokens.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_
from torch import nn

from cocu_core.model.layers import Block, CrossAttention, MixerMlp, act_layer


def straight_through_hard(soft: torch.Tensor, dim: int) -> torch.Tensor:
    """Why: one-hot of the argmax in the forward pass, the soft gradient in the backward (GV's hard_softmax)."""
    index = soft.argmax(dim, keepdim=True)
    hard = torch.zeros_like(soft).scatter_(dim, index, 1.0)
    return hard - soft.detach() + soft


def gumbel_noise(like: torch.Tensor) -> torch.Tensor:
    """Why: Gumbel(0, 1) samples, with uniforms clamped away from 0 and 1 so the log never overflows."""
    tiny = torch.finfo(like.dtype).tiny
    u = torch.rand_like(like).clamp_(tiny, 1.0 - torch.finfo(like.dtype).eps)
    return -torch.log(-torch.log(u))


class AssignAttention(nn.Module):
    """Hard 1-head assignment of image tokens to group tokens (softmax over the groups axis)."""

    def __init__(self, dim: int, qkv_bias: bool = True, assign_eps: float = 1.0, gumbel_tau: float = 1.0) -> None:
        super().__init__()
        self.scale = dim ** -0.5
        self.assign_eps = assign_eps
        self.gumbel_tau = gumbel_tau
        self.gumbel = True  # off: train mode takes the plain hard argmax (GV's gumbel=False)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, return_attn: bool = False
    ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Why: (B, G, C) merged tokens, plus the plain-softmax and the hard assignments (B, G, N) on request."""
        k, v = self.kv(key).chunk(2, dim=-1)
        raw = torch.bmm(self.q(query), k.transpose(1, 2)) * self.scale
        if self.training and self.gumbel:
            soft = F.softmax((raw + gumbel_noise(raw)) / self.gumbel_tau, dim=-2)
        else:
            soft = F.softmax(raw, dim=-2)
        hard = straight_through_hard(soft, dim=-2)
        attn = hard / (hard.sum(dim=-1, keepdim=True) + self.assign_eps)
        out = self.proj(torch.bmm(attn, v))
        if not return_attn:
            return out, None, None
        plain = F.softmax(raw, dim=-2) if self.training and self.gumbel else soft
        return out, plain, hard


class CrossAttnBlock(nn.Module):
    """Post-norm cross-attention block: group tokens attend to the image tokens (GV, ``post_norm=True``)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, act: str, eps: float) -> None:
        super().__init__()
        self.attn = CrossAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer(act))
        self.norm_post = nn.LayerNorm(dim, eps=eps)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Why: queries are already normalised upstream; the block normalises its output instead."""
        x = query + self.attn(query, key)
        x = x + self.mlp(self.norm2(x))
        return self.norm_post(x)


class GroupingBlock(nn.Module):
    """Merge image tokens into ``num_output_group`` segment tokens (GV's GroupingBlock, equal in/out width)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_group_token: int,
        num_output_group: int,
        mlp_ratio: float,
        assign_mlp_ratio: Sequence[float],
        qkv_bias: bool,
        assign_eps: float,
        gumbel_tau: float,
        act: str,
        eps: float,
    ) -> None:
        super().__init__()
        tokens_dim, channels_dim = int(assign_mlp_ratio[0] * dim), int(assign_mlp_ratio[1] * dim)
        self.norm_tokens = nn.LayerNorm(dim, eps=eps)
        self.mlp_inter = MixerMlp(num_group_token, tokens_dim, num_output_group, act_layer=act_layer(act))
        self.norm_post_tokens = nn.LayerNorm(dim, eps=eps)
        self.norm_x = nn.LayerNorm(dim, eps=eps)
        self.pre_assign_attn = CrossAttnBlock(dim, num_heads, mlp_ratio, qkv_bias, act, eps)
        self.assign = AssignAttention(dim, qkv_bias, assign_eps, gumbel_tau)
        self.norm_new_x = nn.LayerNorm(dim, eps=eps)
        self.mlp_channels = Mlp(dim, channels_dim, dim, act_layer=act_layer(act))

    def forward(
        self, x: torch.Tensor, group_tokens: torch.Tensor, return_attn: bool = False
    ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Why: (B, S_out, C) segment tokens from (B, N, C) image tokens and (B, S_in, C) group tokens."""
        group_tokens = self.norm_tokens(group_tokens)
        x = self.norm_x(x)
        projected = self.norm_post_tokens(self.mlp_inter(group_tokens))
        projected = self.pre_assign_attn(projected, x)
        new_x, soft, hard = self.assign(projected, x, return_attn)
        new_x = new_x + projected
        new_x = new_x + self.mlp_channels(self.norm_new_x(new_x))
        return new_x, soft, hard


class GroupingStage(nn.Module):
    """Blocks over [image tokens, group tokens], then (if the stage has group tokens) a grouping block."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        num_group_token: int,
        num_output_group: int,
        num_prev_group_token: int,
        drop_path: Sequence[float],
        mlp_ratio: float,
        assign_mlp_ratio: Sequence[float],
        qkv_bias: bool,
        assign_eps: float,
        gumbel_tau: float,
        act: str,
        eps: float,
    ) -> None:
        super().__init__()
        self.num_group_token = num_group_token
        self.blocks = nn.ModuleList(
            [Block(dim, num_heads, mlp_ratio, qkv_bias, drop_path[i], act, eps) for i in range(depth)]
        )
        self.group_token: Optional[nn.Parameter] = None
        self.grouping: Optional[GroupingBlock] = None
        self.group_projector: Optional[nn.Sequential] = None
        if num_group_token > 0:
            self.group_token = nn.Parameter(torch.zeros(1, num_group_token, dim))
            self.grouping = GroupingBlock(dim, num_heads, num_group_token, num_output_group, mlp_ratio,
                                          assign_mlp_ratio, qkv_bias, assign_eps, gumbel_tau, act, eps)
            if num_prev_group_token > 0:
                self.group_projector = nn.Sequential(
                    nn.LayerNorm(dim, eps=eps),
                    MixerMlp(num_prev_group_token, dim // 2, num_group_token, act_layer=act_layer(act)),
                )

    def forward(
        self, x: torch.Tensor, prev_group_tokens: Optional[torch.Tensor], return_attn: bool = False
    ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Why: (tokens out, this stage's group tokens, soft, hard assignment) for the next stage."""
        if self.group_token is None:
            for blk in self.blocks:
                x = blk(x)
            return x, None, None, None
        group = self.group_token.expand(x.shape[0], -1, -1)
        if self.group_projector is not None:
            group = group + self.group_projector(prev_group_tokens)
        n = x.shape[1]
        cat = torch.cat([x, group], dim=1)
        for blk in self.blocks:
            cat = blk(cat)
        x, group = cat[:, :n], cat[:, n:]
        x, soft, hard = self.grouping(x, group, return_attn)
        return x, group, soft, hard


class VisionTransformer(nn.Module):
    """The GroupViT image tower: returns the final segment tokens (normalised) and their mean."""

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        in_chans: int,
        width: int,
        heads: int,
        depths: Sequence[int],
        num_group_tokens: Sequence[int],
        num_output_groups: Sequence[int],
        mlp_ratio: float,
        assign_mlp_ratio: Sequence[float],
        qkv_bias: bool,
        assign_eps: float,
        gumbel_tau: float,
        drop_path_rate: float,
        act: str,
        eps: float,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.patch_embed = nn.Conv2d(in_chans, width, kernel_size=patch_size, stride=patch_size)
        self.patch_norm = nn.LayerNorm(width, eps=eps)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, width))
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.stages.append(GroupingStage(
                width, depth, heads, num_group_tokens[i],
                num_output_groups[i] if i < len(num_output_groups) else 0,
                num_group_tokens[i - 1] if i > 0 else 0,
                dpr[start:start + depth], mlp_ratio, assign_mlp_ratio, qkv_bias, assign_eps, gumbel_tau, act, eps,
            ))
        self.norm = nn.LayerNorm(width, eps=eps)
        self.init_weights()

    def init_weights(self) -> None:
        """Why: GV's init: trunc_normal(.02) Linears with zero bias, unit LayerNorms, trunc_normal pos embed and
        first-stage group tokens; group tokens of stages with a projector stay zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        trunc_normal_(self.pos_embed, std=0.02)
        for stage in self.stages:
            if stage.group_token is not None and stage.group_projector is None:
                trunc_normal_(stage.group_token, std=0.02)

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """Why: inputs of another size (eval crops) get the learnt grid resized bicubically to (h, w)."""
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        dim = self.pos_embed.shape[-1]
        grid = self.pos_embed.reshape(1, self.grid, self.grid, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(1, h * w, dim)

    def forward(
        self, images: torch.Tensor, return_attn: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Why: (B, G_last, C) normalised segment tokens and, on request, per-stage soft/hard assignments."""
        x = self.patch_embed(images)
        h, w = x.shape[-2:]
        x = self.patch_norm(x.flatten(2).transpose(1, 2))
        x = x + self.position_embedding(h, w)
        group = None
        softs: list[torch.Tensor] = []
        hards: list[torch.Tensor] = []
        for stage in self.stages:
            x, group, soft, hard = stage(x, group, return_attn)
            if soft is not None:
                softs.append(soft)
                hards.append(hard)
        return self.norm(x), softs, hards


def compose_assignments(attn_soft: Sequence[torch.Tensor]) -> torch.Tensor:
    """Why: pixel -> final group maps (B, G_last, N_patches) are the stage assignments chained by matmul."""
    if not len(attn_soft):
        raise ValueError("compose_assignments needs at least one stage assignment (encode_image(return_attn=True))")
    out = attn_soft[0]
    for a in attn_soft[1:]:
        out = torch.bmm(a, out)
    return out

